//! Authentication: subscriber JWTs (verified by [`JwtVerifier`], taken by handlers as the
//! [`Subscriber`] and [`Admin`] extractors) and publisher client certificates (`mtls`).

pub mod jwt;
pub(crate) mod mtls;
mod request;
mod revocation;

pub use jwt::{JwtVerifier, Subscriber};
pub use request::{bearer, set_cookie, Admin, TokenAuth, ADMIN_COOKIE, COOKIE};
pub use revocation::Revocations;
