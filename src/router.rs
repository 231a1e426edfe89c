//! The composition root: every HTTP route and gRPC service, wired to the state they use. It
//! imports the features; no feature imports it.

use axum::routing::{get, post};
use axum::Router;

use crate::control::service::ControlService;
use crate::ingest::pb;
use crate::ingest::publisher::PublisherService;
use crate::state::AppState;
use crate::{admin, demo, egress};

/// The HTTP routes.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new()
        .route(
            "/api/sse",
            get(egress::sse::stream).route_layer(axum::middleware::from_fn_with_state(
                state.metrics.clone(),
                admin::count_stream_opens,
            )),
        )
        .route(
            "/api/sse/session",
            post(egress::session::create).delete(egress::session::delete),
        )
        .route(
            "/api/sse/subscriptions",
            post(egress::subscriptions::change),
        )
        .route("/health", get(admin::health))
        .route("/ready", get(admin::ready))
        .route("/metrics", get(admin::metrics))
        .route("/admin", get(admin::page))
        .route("/admin/session", post(admin::session))
        .route("/admin/connections", get(admin::connections))
        .route("/admin/channels", get(admin::channels))
        .route("/admin/history", get(admin::history))
        .route("/admin/disconnect", post(admin::disconnect));
    if state.demo.is_some() {
        router = router.merge(demo::routes());
    }
    let origins = state.config.http.cors_origins.clone();
    let router = if origins.is_empty() {
        router
    } else {
        router.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_credentials(true)
                .allow_methods([http::Method::GET, http::Method::POST, http::Method::DELETE])
                .allow_headers([
                    http::header::AUTHORIZATION,
                    http::header::CONTENT_TYPE,
                    http::HeaderName::from_static("last-event-id"),
                ]),
        )
    };
    router.with_state(state)
}

/// The gRPC services: `Publisher`, `Control`, health and reflection.
///
/// # Errors
/// When the reflection descriptors cannot be decoded (a build defect).
pub(crate) async fn grpc_routes(state: &AppState) -> anyhow::Result<tonic::service::Routes> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<pb::publisher_server::PublisherServer<PublisherService>>()
        .await;
    health_reporter
        .set_serving::<pb::control_server::ControlServer<ControlService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // Both versions: grpcurl and grpcio-reflection clients still ask for v1alpha.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let publisher = PublisherService::new(state.pipeline.clone(), state.tasks.clone());
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(publisher.into_server())
        .add_service(
            ControlService::new(state.control.clone(), state.pipeline.publishers.clone())
                .into_server(),
        );
    Ok(tonic::service::Routes::from(
        routes
            .into_axum_router()
            .layer(axum::middleware::from_fn_with_state(
                state.metrics.clone(),
                admin::time_grpc_request,
            )),
    ))
}
