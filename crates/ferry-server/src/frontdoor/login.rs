//! The login exchange: SCRAM-SHA-256 over SASL messages, throttled per client address.

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use pgwire::messages::startup::Authentication;
use pgwire::messages::PgWireBackendMessage;
use tracing::{info, warn};

use super::scram::{Malformed, Verdict, MECHANISM};
use super::startup::read_typed;
use super::throttle::Failure;
use super::{send, send_fatal, FrontDoor, Io};
use crate::error::code;
use crate::metrics::Metrics;

/// Runs the exchange; `Ok(true)` when the client proved the password. Every other ending has
/// been answered already (or the client left).
pub async fn login(
    io: &mut Box<dyn Io>,
    front: &FrontDoor,
    metrics: &Metrics,
    user: &str,
    peer: SocketAddr,
) -> io::Result<bool> {
    let limit = front.limits.max_startup_message;
    send(
        io,
        [PgWireBackendMessage::Authentication(Authentication::SASL(
            vec![MECHANISM.to_owned()],
        ))],
    )
    .await?;

    // SASLInitialResponse: the mechanism, and the client-first message.
    let Some(body) = sasl_message(io, limit, metrics).await? else {
        // psql closes here to ask for the password; not a failed login.
        return Ok(false);
    };
    let first = match initial_response(&body) {
        Ok(first) => first,
        Err(message) => return refuse_malformed(io, metrics, message).await,
    };
    let (exchange, server_first) = match front.credentials.start(user, first) {
        Ok(r) => r,
        Err(e) => return refuse_malformed(io, metrics, e.to_string()).await,
    };
    send(
        io,
        [PgWireBackendMessage::Authentication(
            Authentication::SASLContinue(Bytes::from(server_first)),
        )],
    )
    .await?;

    // SASLResponse: the client-final message with the proof.
    let Some(last) = sasl_message(io, limit, metrics).await? else {
        return Ok(false);
    };
    // Earlier failures from this address slow the check down, whatever its outcome.
    let delay = front.throttle.delay(peer.ip());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match exchange.finish(&last) {
        Err(e) => refuse_malformed(io, metrics, e.to_string()).await,
        Ok(Verdict::Accepted(server_final)) => {
            front.throttle.succeeded(peer.ip());
            send(
                io,
                [PgWireBackendMessage::Authentication(
                    Authentication::SASLFinal(Bytes::from(server_final)),
                )],
            )
            .await?;
            Ok(true)
        }
        Ok(Verdict::Refused) => {
            metrics.login_failed();
            match front.throttle.failed(peer.ip()) {
                Failure::Counted(failures) => {
                    info!(client = %peer.ip(), user, failures, "password authentication failed")
                }
                Failure::LockedOut(lockout) => warn!(
                    client = %peer.ip(),
                    user,
                    lockout_seconds = lockout.as_secs(),
                    "refusing logins from this address for a while: too many failed logins"
                ),
            }
            send_fatal(
                io,
                code::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            )
            .await;
            Ok(false)
        }
    }
}

/// The next message, which must be a SASL message (`p`).
async fn sasl_message(
    io: &mut Box<dyn Io>,
    limit: usize,
    metrics: &Metrics,
) -> io::Result<Option<Vec<u8>>> {
    match read_typed(io, limit).await? {
        None | Some(Ok((b'X', _))) => Ok(None),
        Some(Ok((b'p', body))) => Ok(Some(body)),
        Some(Ok((kind, _))) => {
            refuse_malformed(
                io,
                metrics,
                format!("expected SASL response, got message type {kind}"),
            )
            .await?;
            Ok(None)
        }
        Some(Err(message)) => {
            refuse_malformed(io, metrics, message).await?;
            Ok(None)
        }
    }
}

/// The client-first message of a SASLInitialResponse: mechanism, length, data.
fn initial_response(body: &[u8]) -> Result<&[u8], String> {
    let end = body
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| Malformed("the mechanism is not terminated").to_string())?;
    if &body[..end] != MECHANISM.as_bytes() {
        return Err("client selected an invalid SASL authentication mechanism".into());
    }
    let rest = &body[end + 1..];
    let Some((length, data)) = rest.split_first_chunk::<4>() else {
        return Err(Malformed("the message is too short").to_string());
    };
    match usize::try_from(i32::from_be_bytes(*length)) {
        Ok(n) if n == data.len() => Ok(data),
        _ => Err(Malformed("the length of the initial response is wrong").to_string()),
    }
}

async fn refuse_malformed(
    io: &mut Box<dyn Io>,
    metrics: &Metrics,
    message: String,
) -> io::Result<bool> {
    metrics.protocol_violation();
    send_fatal(io, code::PROTOCOL_VIOLATION, message).await;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_responses_are_checked() {
        let ok = [b"SCRAM-SHA-256\0".as_slice(), &3i32.to_be_bytes(), b"abc"].concat();
        assert_eq!(initial_response(&ok).unwrap(), b"abc");
        for bad in [
            b"garbage".to_vec(),
            Vec::new(),
            [
                b"SCRAM-SHA-256\0".as_slice(),
                &(-5i32).to_be_bytes(),
                b"abc",
            ]
            .concat(),
            [b"SCRAM-SHA-256\0".as_slice(), &i32::MAX.to_be_bytes()].concat(),
            [b"SCRAM-SHA-256\0".as_slice(), &0i32.to_be_bytes(), b"x"].concat(),
            b"SCRAM-SHA-256\0\0\0".to_vec(),
            [b"PLAIN\0".as_slice(), &0i32.to_be_bytes()].concat(),
        ] {
            assert!(initial_response(&bad).is_err(), "{bad:?}");
        }
    }
}
