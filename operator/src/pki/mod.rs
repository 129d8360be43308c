//! The operator's certificates: the CA and serving certificate it makes, and the serving
//! certificate's upkeep (its own Secret, or a directory another issuer keeps).

pub mod certs;
pub mod tls;
