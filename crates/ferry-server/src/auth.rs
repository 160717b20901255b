//! Authentication of psql clients: SCRAM-SHA-256 against the one configured user.

use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{AuthSource, DefaultServerParameterProvider, LoginInfo, Password};
use pgwire::error::PgWireResult;
use ring::rand::{SecureRandom, SystemRandom};

/// PBKDF2 iterations, PostgreSQL's default.
const ITERATIONS: usize = 4096;

/// The user and password clients log in with.
pub struct Credentials {
    user: String,
    salt: Vec<u8>,
    salted: Vec<u8>,
    /// What an unknown user is checked against: a secret nobody knows, so that the exchange
    /// fails the same way as for a wrong password and does not tell which users exist.
    decoy: Vec<u8>,
}

impl Credentials {
    pub fn new(user: &str, password: &str) -> Self {
        let rng = SystemRandom::new();
        let mut salt = vec![0u8; 16];
        let mut decoy_pw = [0u8; 32];
        // A failing system RNG leaves zeros: the salt is public anyway, and the decoy
        // password stays unknown to clients because it is never sent anywhere.
        let _ = rng.fill(&mut salt);
        let _ = rng.fill(&mut decoy_pw);
        let salted = gen_salted_password(password, &salt, ITERATIONS);
        let decoy = gen_salted_password(&hex::encode(decoy_pw), &salt, ITERATIONS);
        Credentials {
            user: user.to_owned(),
            salt,
            salted,
            decoy,
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl AuthSource for Credentials {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let hash = if login.user() == Some(self.user.as_str()) {
            &self.salted
        } else {
            &self.decoy
        };
        Ok(Password::new(Some(self.salt.clone()), hash.clone()))
    }
}

/// The startup handler: server parameters a PostgreSQL client expects, then SCRAM.
pub fn startup_handler(
    credentials: Arc<Credentials>,
) -> SASLAuthStartupHandler<DefaultServerParameterProvider> {
    let mut scram = ScramAuth::new(credentials);
    scram.set_iterations(ITERATIONS);
    let mut params = DefaultServerParameterProvider::default();
    params.server_version = format!("16.0 (Ferry {})", env!("CARGO_PKG_VERSION"));
    params.scram_iterations = ITERATIONS;
    SASLAuthStartupHandler::new(Arc::new(params)).with_scram(scram)
}
