//! The debug CLI: verbs that ask the local agent over its socket or read the pinned maps.

pub mod agent_client;
pub mod bpf;
pub mod ipam;
pub mod observe;
pub mod policy;
pub mod service;
pub mod status;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML; returns false when `Text` was requested (the caller prints).
pub fn print_structured<T: serde::Serialize>(
    output: Output,
    value: &T,
) -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    match output {
        Output::Text => Ok(false),
        Output::Json => {
            println!("{}", serde_json::to_string_pretty(value)?);
            Ok(true)
        }
        Output::Yaml => {
            print!("{}", serde_saphyr::to_string(value)?);
            Ok(true)
        }
    }
}
