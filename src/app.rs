//! The names tests and tools have used since before the split into [`crate::state`],
//! `router` and [`crate::server`].

pub use crate::server::{
    install_crypto_provider, load_material, ConfigSource, Gateway, Material, ReloadError,
};
pub use crate::state::{AppState, DemoState};
