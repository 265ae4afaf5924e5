//! Reading a workspace or dev record at run time: the upstream field, the owner and the status,
//! each checked, so a malformed record is a clear 502 (logged with key and field, never the
//! values) and a stopped workspace a 503, never a panic or a guess. Called by `decide`, which
//! tells a caller why a record cannot be proxied only once auth has let the caller through.

use super::store::Cached;
use super::Route;
use crate::error::GatewayError;
use crate::upstream::UpstreamAddr;

/// The fields of a record that routing and auth use.
#[derive(Debug)]
pub struct RouteRecord<'r> {
    /// The upstream, or why the record cannot be proxied now (`NotRunning`, `BadRecord`):
    /// for a caller auth has let through, since it tells the workspace's state.
    pub upstream: Result<UpstreamAddr, GatewayError>,
    pub owner: &'r str,
    /// The status field's value, when the route has one.
    pub status: Option<&'r str>,
}

/// The state a workspace must be in for its traffic to be proxied.
pub const RUNNING: &str = "running";

/// The record's upstream and owner as `route` reads them. The status check and the upstream
/// parse are done once per cached record (`Cached::upstream`); a bad record is logged then.
pub fn read<'r>(
    route: &Route,
    key: &str,
    record: &'r Cached,
    port: Option<u16>,
) -> Result<RouteRecord<'r>, GatewayError> {
    let upstream = match record.upstream().get() {
        Some((shape, parsed)) if *shape == route.record_shape() => parsed.get(),
        _ => {
            let parsed = parse_upstream(route, key, record);
            // Another route shape may have filled it first: then this one parses each time.
            let _ = record
                .upstream()
                .set((route.record_shape(), super::store::Parsed::new(&parsed)));
            parsed
        }
    };
    let owner = field(record, key, &route.owner_field)?;
    let status = match &route.status_field {
        Some(f) => Some(field(record, key, f)?),
        None => None,
    };
    // A `{port}` route addresses that port on the record's host, whatever port the record names.
    let upstream = match port {
        Some(p) => upstream.map(|u| u.with_port(p)),
        None => upstream,
    };
    Ok(RouteRecord {
        upstream,
        owner,
        status,
    })
}

/// A field's value, trimmed; missing or empty is a bad record (logged with the key and the
/// field's name, never the value).
fn field<'r>(record: &'r Cached, key: &str, name: &str) -> Result<&'r str, GatewayError> {
    match record.get(name).map(|v| v.trim()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => {
            log::warn!("bad route record {key}: field {name:?} is missing or empty");
            Err(GatewayError::BadRecord)
        }
    }
}

/// The status check and the upstream field, parsed.
fn parse_upstream(route: &Route, key: &str, record: &Cached) -> Result<UpstreamAddr, GatewayError> {
    if let Some(status_field) = &route.status_field {
        if field(record, key, status_field)? != RUNNING {
            return Err(GatewayError::NotRunning);
        }
    }
    let raw = field(record, key, &route.upstream_field)?;
    UpstreamAddr::parse(raw, route.port).map_err(|why| {
        log::warn!(
            "bad route record {key}: field {:?} {why}",
            route.upstream_field
        );
        GatewayError::BadRecord
    })
}
