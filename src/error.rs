//! One error type for every client-visible failure, mapped once to an HTTP status and a gRPC code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A failure that is reported to a client (publisher or subscriber).
///
/// Messages are safe to show to the client: they say what was wrong without echoing secrets.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A channel name or pattern that does not follow the grammar or the configured types.
    #[error("invalid channel: {0}")]
    InvalidChannel(String),
    /// Published data that is not JSON.
    #[error("data is not valid JSON: {0}")]
    InvalidData(String),
    /// Any other malformed field or request.
    #[error("{0}")]
    InvalidArgument(String),
    /// An event larger than `limits.max_event_bytes`.
    #[error("event data is {size} bytes, over the limit of {max} bytes")]
    EventTooLarge {
        /// Size of the rejected data in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// A publisher over its rate limit.
    #[error("rate limit exceeded: {0}")]
    RateLimited(String),
    /// Missing, malformed, expired or badly signed credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Authenticated, but not allowed.
    #[error("{0}")]
    PermissionDenied(String),
    /// Unknown connection or resource.
    #[error("{0}")]
    NotFound(String),
    /// The user holds too many open streams.
    #[error("too many open streams for this user (limit {limit})")]
    TooManyConnections {
        /// The configured per-user limit.
        limit: usize,
    },
    /// The broker (event log) cannot be reached; nothing was accepted.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The gateway is shutting down.
    #[error("gateway is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected condition; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl GatewayError {
    /// The HTTP status this error is reported with.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::InvalidChannel(_) | Self::InvalidData(_) | Self::InvalidArgument(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::EventTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited(_) | Self::TooManyConnections { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) | Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC code this error is reported with.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::InvalidChannel(_) | Self::InvalidData(_) | Self::InvalidArgument(_) => {
                tonic::Code::InvalidArgument
            }
            Self::EventTooLarge { .. } | Self::RateLimited(_) | Self::TooManyConnections { .. } => {
                tonic::Code::ResourceExhausted
            }
            Self::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Self::PermissionDenied(_) => tonic::Code::PermissionDenied,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::Unavailable(_) | Self::ShuttingDown => tonic::Code::Unavailable,
            Self::Internal(_) => tonic::Code::Internal,
        }
    }
}

impl From<GatewayError> for tonic::Status {
    fn from(err: GatewayError) -> Self {
        if let GatewayError::Internal(detail) = &err {
            tracing::error!(%detail, "internal error");
        }
        tonic::Status::new(err.grpc_code(), err.to_string())
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        if let GatewayError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let status = self.http_status();
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        let mut response = (status, body).into_response();
        if matches!(
            self,
            Self::TooManyConnections { .. } | Self::RateLimited(_) | Self::Unavailable(_)
        ) {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("5"),
            );
        }
        response
    }
}

/// Result alias for operations that report a [`GatewayError`].
pub type Result<T, E = GatewayError> = std::result::Result<T, E>;
