//! The `ssegateway.v1.Control` gRPC service: only certificates whose `[[publishers]]` entry has
//! `control = true` may call it.

use tonic::{Request, Response, Status};

use super::{Command, Control};
use crate::auth::mtls::publisher_name;
use crate::error::GatewayError;
use crate::ingest::pb::{self, ControlResponse, DisconnectRequest, UnsubscribeRequest};
use crate::ingest::pipeline::Publishers;

/// The Control service.
pub(crate) struct ControlService {
    control: Control,
    /// Who may call it, read per request (a reload replaces it).
    publishers: Publishers,
}

impl ControlService {
    /// A service acting through `control`, for the callers `publishers` allows.
    pub(crate) fn new(control: Control, publishers: Publishers) -> Self {
        Self {
            control,
            publishers,
        }
    }

    /// The generated server wrapper.
    pub(crate) fn into_server(self) -> pb::control_server::ControlServer<Self> {
        pb::control_server::ControlServer::new(self)
    }

    /// The caller's certificate name, when its entry allows control.
    fn authorize<T>(&self, req: &Request<T>) -> Result<String, GatewayError> {
        let name = req
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|c| publisher_name(c.as_ref())))
            .ok_or_else(|| {
                GatewayError::Unauthenticated("a named client certificate is required".into())
            })?;
        if self.publishers.load().get(&name).is_some_and(|p| p.control) {
            Ok(name)
        } else {
            Err(GatewayError::PermissionDenied(format!(
                "{name:?} may not call Control (its [[publishers]] entry needs control = true)"
            )))
        }
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn disconnect(
        &self,
        request: Request<DisconnectRequest>,
    ) -> Result<Response<ControlResponse>, Status> {
        let caller = self.authorize(&request)?;
        let r = request.into_inner();
        let command = Command::disconnect(r.user_id, r.reason, r.revoke_tokens)?;
        tracing::info!(%caller, user_id = %command.user_id(), revoke_tokens = command.revokes(), "Control.Disconnect");
        let streams = self.control.execute(command).await?;
        Ok(Response::new(ControlResponse { streams }))
    }

    async fn unsubscribe(
        &self,
        request: Request<UnsubscribeRequest>,
    ) -> Result<Response<ControlResponse>, Status> {
        let caller = self.authorize(&request)?;
        let r = request.into_inner();
        let command = Command::unsubscribe(r.user_id, r.pattern, r.reason)?;
        tracing::info!(%caller, user_id = %command.user_id(), "Control.Unsubscribe");
        let streams = self.control.execute(command).await?;
        Ok(Response::new(ControlResponse { streams }))
    }
}
