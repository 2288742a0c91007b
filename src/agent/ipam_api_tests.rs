//! The `/v1/ipam` endpoints over a real unix socket, with the CLI's client and renderers.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::agent::api::{self, StatusResponse};
use crate::cli::agent_client::{self, AgentClientError};
use crate::controllers::agent::ipam_state::NodeIpam;

/// Serves the agent API on a socket in a temp dir; stopped when dropped.
pub(crate) struct TestAgent {
    pub socket: PathBuf,
    pub ipam: Arc<NodeIpam>,
    pub datapath: Arc<crate::agent::endpoints::fake::FakeDatapath>,
    token: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

pub(crate) fn serve_test_agent() -> TestAgent {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("beeline.sock");
    let ipam = Arc::new(NodeIpam::new(vec![Family::V4], &dir.path().join("state")));
    let datapath = Arc::new(crate::agent::endpoints::fake::FakeDatapath::default());
    let state = Arc::new(ApiState {
        node_name: "n1".into(),
        config: crate::config::Config::from_raw(&Default::default()).unwrap(),
        health: crate::runtime::health::Telemetry::new("test").health,
        ipam: ipam.clone(),
        policy: Default::default(),
        endpoints: Arc::new(crate::agent::endpoints::EndpointManager::new(
            &dir.path().join("state"),
            datapath.clone(),
            ipam.clone(),
            Arc::new(crate::agent::ipam_expiry::SystemClock),
        )),
        endpoint_kube: None,
        multi_pool: None,
        crd: None,
    });
    let token = CancellationToken::new();
    let server = api::serve(&socket, state, token.clone()).unwrap();
    tokio::spawn(server);
    TestAgent { socket, ipam, datapath, token, _dir: dir }
}

fn request(pod: &str, container: &str) -> Vec<u8> {
    let req = AllocateRequest {
        namespace: "default".into(),
        pod: pod.into(),
        container_id: container.into(),
        ifname: "eth0".into(),
        family: None,
    };
    serde_json::to_vec(&req).unwrap()
}

async fn post(socket: &std::path::Path, body: Vec<u8>) -> Result<AllocateResponse, AgentClientError> {
    agent_client::request_json(socket, hyper::Method::POST, "/v1/ipam", Some(body)).await
}

fn api_error(err: AgentClientError) -> (u16, ApiError) {
    match err {
        AgentClientError::Status { status, body, .. } => (status, serde_json::from_str(&body).unwrap()),
        other => panic!("expected an HTTP error, got {other}"),
    }
}

#[tokio::test]
async fn allocate_list_release_over_the_socket() {
    let agent = serve_test_agent();

    // Before the CIDR is known: an immediate, retryable refusal (not a hang).
    let (status, err) = api_error(post(&agent.socket, request("web-1", "c1")).await.unwrap_err());
    assert_eq!((status, err.code.as_str(), err.retryable), (503, "not-ready", true), "{err:?}");
    let status: StatusResponse = agent_client::get_json(&agent.socket, "/v1/status").await.unwrap();
    assert_eq!(status.ipam_status, ["waiting: the node's pod CIDRs"]);

    agent.ipam.set_cidrs(&["10.0.42.0/29".parse().unwrap()]).unwrap();
    let first = post(&agent.socket, request("web-1", "c1")).await.unwrap();
    assert_eq!(first.ips.len(), 1);
    let ip = &first.ips[0];
    assert_eq!((ip.gateway.to_string(), ip.cidr.to_string()), ("10.0.42.1".into(), "10.0.42.0/29".into()));
    assert_eq!(post(&agent.socket, request("web-1", "c1")).await.unwrap(), first, "a retried ADD is idempotent");
    for n in 2..=4 {
        post(&agent.socket, request(&format!("web-{n}"), &format!("c{n}"))).await.unwrap();
    }
    let (status, err) = api_error(post(&agent.socket, request("web-5", "c5")).await.unwrap_err());
    assert_eq!((status, err.code.as_str(), err.retryable), (409, "exhausted", false));
    assert!(err.message.contains("IPv4: 6/6 allocated from 10.0.42.0/29"), "{}", err.message);

    let listing: IpamListing = agent_client::get_json(&agent.socket, "/v1/ipam").await.unwrap();
    assert_eq!(listing.status, ["IPv4: 6/6 allocated from 10.0.42.0/29"]);
    assert_eq!(listing.allocations.len(), 6);
    let text = crate::cli::ipam::render(&listing);
    assert!(text.starts_with("IPv4: 6/6 allocated from 10.0.42.0/29\nADDRESS"), "{text}");
    assert!(text.contains(&format!("{}  default/web-1  c1/eth0", ip.ip)), "{text}");
    assert!(text.contains("\n10.0.42.1  router\n"), "{text}");
    let status: StatusResponse = agent_client::get_json(&agent.socket, "/v1/status").await.unwrap();
    assert!(crate::cli::status::render(&status, false).contains("  IPv4: 6/6 allocated from 10.0.42.0/29\n"));

    let del = |c: &'static str| {
        let socket = agent.socket.clone();
        async move {
            agent_client::request_json::<ReleaseResponse>(
                &socket,
                hyper::Method::DELETE,
                &format!("/v1/ipam/{c}/eth0"),
                None,
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(del("c1").await.released, [ip.ip]);
    assert_eq!(del("c1").await.released, Vec::<IpAddr>::new(), "DEL twice is success");
    assert_eq!(del("unknown").await.released, Vec::<IpAddr>::new());
    let listing: IpamListing = agent_client::get_json(&agent.socket, "/v1/ipam").await.unwrap();
    assert_eq!(listing.status, ["IPv4: 5/6 allocated from 10.0.42.0/29"]);
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let agent = serve_test_agent();
    agent.ipam.set_cidrs(&["10.0.43.0/24".parse().unwrap()]).unwrap();
    let (status, err) = api_error(post(&agent.socket, request("web-1", "")).await.unwrap_err());
    assert_eq!((status, err.code.as_str()), (400, "invalid"));
    let v6 = br#"{"namespace":"d","pod":"p","containerID":"c","ifname":"eth0","family":"IPv6"}"#.to_vec();
    let (status, err) = api_error(post(&agent.socket, v6).await.unwrap_err());
    assert_eq!(status, 400);
    assert!(err.message.contains("IPv6 is not enabled"), "{}", err.message);
    match post(&agent.socket, b"{not json".to_vec()).await.unwrap_err() {
        AgentClientError::Status { status, .. } => assert!((400..500).contains(&status)),
        other => panic!("{other}"),
    }
}

/// The endpoint API over the socket: PUT registers (the MTU came with the allocation), the
/// address cannot be released while the endpoint holds it, DELETE removes and releases, twice.
#[tokio::test]
async fn endpoint_put_blocks_release_until_delete() {
    use crate::agent::endpoint_core::{Endpoint, EndpointRequest};
    use crate::agent::endpoints::RemoveOutcome;
    let agent = serve_test_agent();
    agent.ipam.set_cidrs(&["10.0.5.0/24".parse().unwrap()]).unwrap();
    let allocated = post(&agent.socket, request("web", "c1")).await.unwrap();
    assert_eq!(allocated.mtu, Some(1450), "tunnel mode by default: 1500 - 50");
    let ip = allocated.ips[0].ip;
    let registration = EndpointRequest {
        namespace: "default".into(),
        pod: "web".into(),
        ifname: "eth0".into(),
        host_ifname: "lxc000000000001".into(),
        host_ifindex: 7,
        host_mac: "aa:00:00:00:00:01".into(),
        mac: "02:00:00:00:00:01".into(),
        ips: vec![ip],
        netns: "/var/run/netns/x".into(),
    };
    let put = |body: EndpointRequest, container: &'static str| {
        let socket = agent.socket.clone();
        async move {
            let uri = format!("/v1/endpoint/{container}");
            agent_client::request_json::<Endpoint>(
                &socket,
                hyper::Method::PUT,
                &uri,
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await
        }
    };
    let endpoint = put(registration.clone(), "c1").await.unwrap();
    assert_eq!(
        (endpoint.id, endpoint.identity, endpoint.state.as_str()),
        (1, 5, "ready"),
        "init without the kube side"
    );
    // Another container cannot claim the address; bad container IDs are refused.
    let (status, err) = api_error(put(registration.clone(), "c2").await.unwrap_err());
    assert_eq!((status, err.code.as_str()), (409, "not-allocated"), "{err:?}");
    let (status, _) = api_error(put(registration.clone(), "-bad").await.unwrap_err());
    assert_eq!(status, 400);

    let release = || {
        agent_client::request_json::<ReleaseResponse>(&agent.socket, hyper::Method::DELETE, "/v1/ipam/c1/eth0", None)
    };
    let (status, err) = api_error(release().await.unwrap_err());
    assert_eq!((status, err.code.as_str()), (409, "in-use"), "{err:?}");
    assert_eq!(agent.ipam.attachment_ips("c1", "eth0"), vec![ip]);

    let listed: Vec<Endpoint> = agent_client::get_json(&agent.socket, "/v1/endpoint").await.unwrap();
    assert_eq!(listed, vec![endpoint.clone()]);
    for expected in [Some(endpoint), None] {
        let removed: RemoveOutcome =
            agent_client::request_json(&agent.socket, hyper::Method::DELETE, "/v1/endpoint/c1", None).await.unwrap();
        assert_eq!(removed.removed, expected);
    }
    assert!(agent.ipam.attachment_ips("c1", "eth0").is_empty(), "removing the endpoint released its address");
    assert!(agent.datapath.rows.lock().unwrap().is_empty());
    assert!(release().await.unwrap().released.is_empty());
    let (status, _) =
        api_error(agent_client::get_json::<Endpoint>(&agent.socket, "/v1/endpoint/c1").await.unwrap_err());
    assert_eq!(status, 404);
}
