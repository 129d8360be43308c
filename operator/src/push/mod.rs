//! The push: the snapshot hub (compile, assemble, fan out) and the long-poll endpoint sidecars
//! call, with its authentication and the check of a pod on its first poll.

pub mod auth;
pub mod hub;
pub mod podcheck;
pub mod poll;
