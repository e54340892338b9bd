//! Client frames: a request goes to the driver (key-value requests and Log
//! pages) or is answered here (Status, Fault), tagged with the connection
//! and request id so that the answer finds its way back.

use log::{info, warn};
use mio::Token;

use crate::storage::InjectedDiskFault;
use crate::tls::Role;
use crate::wire::{
    DiskFault, ErrorCode, KvRequestRef, MemberRequest, NodeStatus, RequestBody, ResponseBody,
};

use super::driver::ClientRef;
use super::net::ConnKind;
use super::peers::misplaced;
use super::Node;

impl Node {
    /// A key-value request decoded in place (the hot path: no copy of its
    /// key and value before the driver encodes the entry).
    pub(super) fn handle_kv_frame(
        &mut self,
        token: Token,
        kv: KvRequestRef<'_>,
    ) -> Result<(), String> {
        match self.conns.get(&token).map(|c| c.kind).ok_or("gone")? {
            ConnKind::Client => {
                let to = ClientRef::new(token, kv.request_id);
                self.driver.handle_kv(to, kv.command, kv.stale_read);
                Ok(())
            }
            k => Err(misplaced(k, "Request")),
        }
    }

    pub(super) fn handle_request(&mut self, to: ClientRef, body: RequestBody) {
        let (needed, what) = required_role(&body);
        let role = self
            .conns
            .get(&Token(to.conn as usize))
            .map_or(Role::Client, |c| c.role);
        if role < needed {
            let message = format!(
                "{what} needs an {needed} certificate; this connection's certificate is a {role}'s"
            );
            warn!("{}: refusing {what} from a {role} certificate", self.id);
            let body = ResponseBody::Error {
                code: ErrorCode::Forbidden,
                message,
            };
            self.respond(to, body);
            return;
        }
        match body {
            RequestBody::Status => {
                let status = NodeStatus {
                    status: self.driver.raft().status(),
                    addr: self.addr.to_string(),
                    fault: self.faults.spec.clone(),
                    uptime_ms: self.started.elapsed().as_millis() as u64,
                };
                self.respond(to, ResponseBody::Status(Box::new(status)));
            }
            RequestBody::Log {
                from,
                to: last,
                entries_max,
            } => self.driver.handle_log(to, from, last, entries_max),
            RequestBody::Fault(spec) => {
                if let Err(why) = spec.validate(&self.config.ids()) {
                    warn!("{}: refusing fault {spec:?}: {why}", self.id);
                    let body = ResponseBody::Error {
                        code: ErrorCode::BadRequest,
                        message: why,
                    };
                    self.respond(to, body);
                    return;
                }
                info!("{}: fault injection now {spec:?}", self.id);
                self.disk_faults.set(match spec.disk {
                    DiskFault::None => InjectedDiskFault::None,
                    DiskFault::Stall { ms } => InjectedDiskFault::Stall { ms },
                    DiskFault::Eio => InjectedDiskFault::Eio,
                    DiskFault::Full => InjectedDiskFault::Full,
                });
                self.faults.spec = spec;
                self.respond(to, ResponseBody::FaultOk);
            }
            RequestBody::Kv {
                command,
                stale_read,
            } => self.driver.handle_kv(to, command.as_ref(), stale_read),
            RequestBody::Member(req) => self.driver.handle_member(to, req),
            RequestBody::TransferLeader(target) => self.driver.handle_transfer(to, target),
        }
    }
}

/// The role a request needs, and what to call it in a refusal: faults,
/// membership changes and leader transfers change the cluster and need
/// admin; everything else a client may ask.
fn required_role(body: &RequestBody) -> (Role, &'static str) {
    match body {
        RequestBody::Fault(_) => (Role::Admin, "fault"),
        RequestBody::Member(MemberRequest::Change(_)) => (Role::Admin, "a membership change"),
        RequestBody::TransferLeader(_) => (Role::Admin, "a leader transfer"),
        RequestBody::Member(MemberRequest::List) => (Role::Client, "member list"),
        RequestBody::Kv { .. } => (Role::Client, "a key-value request"),
        RequestBody::Status => (Role::Client, "status"),
        RequestBody::Log { .. } => (Role::Client, "log"),
    }
}
