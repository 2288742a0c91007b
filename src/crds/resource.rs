//! `kube::Resource` for the kinds whose root object kube-derive cannot model (no `spec`, or an optional
//! one), so that they work with `kube::Api` like derived kinds.

/// Implements `kube::Resource` for a hand-written root type with `metadata`, `api_version` and `kind` fields.
macro_rules! impl_resource {
    ($ty:ty, kind = $kind:literal, plural = $plural:literal, version = $version:literal, scope = $scope:ty) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = $scope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                $crate::crds::schema::GROUP.into()
            }
            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                $version.into()
            }
            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &kube::core::ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut kube::core::ObjectMeta {
                &mut self.metadata
            }
        }

        impl $ty {
            /// `apiVersion` of this kind.
            pub const API_VERSION: &'static str = concat!("cilium.io/", $version);
            /// `kind` of this kind.
            pub const KIND: &'static str = $kind;
        }
    };
}

pub(crate) use impl_resource;
