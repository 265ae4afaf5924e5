//! Reading a workspace or dev record at run time: the upstream field, the owner and the status,
//! each checked, so a malformed record is a clear 502 (logged with key and field, never the
//! values) and a stopped workspace a 503, never a panic or a guess. Called by `request_filter`.

use super::store::Record;
use super::Route;
use crate::error::GatewayError;
use crate::upstream::UpstreamAddr;

/// The fields of a record that routing and auth use.
#[derive(Debug)]
pub struct RouteRecord<'r> {
    pub upstream: UpstreamAddr,
    pub owner: &'r str,
}

/// The state a workspace must be in for its traffic to be proxied.
pub const RUNNING: &str = "running";

pub fn read<'r>(
    route: &Route,
    key: &str,
    record: &'r Record,
    port: Option<u16>,
) -> Result<RouteRecord<'r>, GatewayError> {
    let field = |name: &str| -> Result<&'r str, GatewayError> {
        match record.get(name).map(|v| v.trim()) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => {
                log::warn!("bad route record {key}: field {name:?} is missing or empty");
                Err(GatewayError::BadRecord)
            }
        }
    };
    if let Some(status_field) = &route.status_field {
        let status = field(status_field)?;
        if status != RUNNING {
            return Err(GatewayError::NotRunning);
        }
    }
    let raw = field(&route.upstream_field)?;
    let upstream = UpstreamAddr::parse(raw, route.port).map_err(|why| {
        log::warn!(
            "bad route record {key}: field {:?} {why}",
            route.upstream_field
        );
        GatewayError::BadRecord
    })?;
    let owner = field(&route.owner_field)?;
    // A `{port}` route addresses that port on the record's host, whatever port the record names.
    let upstream = match port {
        Some(p) => upstream.with_port(p),
        None => upstream,
    };
    Ok(RouteRecord { upstream, owner })
}
