//! The engine's errors are the boundary's error currency ([`ferry_core::Error`]): a kind that
//! decides retries, a message, a hint, and the SQLSTATE a client is shown when the error
//! answers a statement. Each part converts its own errors into it (`From` impls beside them).

pub use ferry_core::Error as FlowError;
