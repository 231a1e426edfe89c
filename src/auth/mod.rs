//! Authentication: subscriber JWTs and publisher client certificates.

pub mod jwt;
pub mod mtls;

pub use jwt::{JwtVerifier, Subscriber};
