//! What people and tools outside the process talk to: the control socket
//! (`control`: `cutover status`, `reload`, `deploy`; `control_response`
//! its answer on the wire), the HTTP endpoint
//! (`http`: /healthz, /status, /metrics, forge webhooks), and the accept
//! loop both HTTP servers share (`accept`: connection cap, timeouts).

pub(crate) mod accept;
pub(crate) mod control;
pub(crate) mod control_response;
pub(crate) mod http;
