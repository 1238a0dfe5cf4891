//! The startup of a PostgreSQL connection: TLS required where the environment says so, then
//! SCRAM-SHA-256 against the role's stored verifier (the password itself is never stored or
//! sent), then the ParameterStatus set drivers expect.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::Sink;
use pgwire::api::ClientInfo;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::{ScramAuth, ScramSecret};
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use super::{PgService, fatal};
use crate::engine::{Catalog, sqlstate};

/// Verifiers from the catalog.
#[derive(Debug)]
struct CatalogAuth {
    catalog: Catalog,
}

#[async_trait]
impl AuthSource for CatalogAuth {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Only SCRAM is offered, which asks for the verifier below.
        Err(PgWireError::InvalidPassword(
            login.user().map(str::to_owned).unwrap_or_default(),
        ))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().map(str::to_owned).unwrap_or_default();
        let verifier = self
            .catalog
            .verifier(&user)
            .await
            .map_err(|err| fatal(err.code, err.message))?;
        // An unknown role fails exactly like a wrong password (28P01).
        let verifier = verifier.ok_or_else(|| PgWireError::InvalidPassword(user.clone()))?;
        Ok((
            ScramSecret::Verifier {
                salt: verifier.salt,
                iterations: verifier.iterations,
                stored_key: verifier.stored_key,
                server_key: verifier.server_key,
            },
            None,
        ))
    }
}

pub struct Startup {
    service: Arc<PgService>,
    inner: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    /// The connection's place under `db.max_connections`, once it asked to start a session.
    admission: std::sync::Mutex<Option<super::Admission>>,
}

impl Startup {
    pub fn new(service: Arc<PgService>) -> Self {
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = super::SERVER_VERSION.to_owned();
        parameters.time_zone = "UTC".to_owned();
        parameters.date_style = "ISO, MDY".to_owned();
        let scram = ScramAuth::new(Arc::new(CatalogAuth {
            catalog: service.engine.catalog.clone(),
        }));
        let pids = Arc::clone(&service.pids) as Arc<dyn pgwire::api::PidSecretKeyGenerator>;
        Self {
            inner: SASLAuthStartupHandler::new(Arc::new(parameters))
                .with_scram(scram)
                .with_pid_secret_key_generator(pids),
            service,
            admission: std::sync::Mutex::new(None),
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if matches!(message, PgWireFrontendMessage::Startup(_))
            && refuses_plain_login(
                self.service.require_tls,
                client.is_secure(),
                client.socket_addr().ip(),
            )
        {
            // Passwords never cross the network in the clear outside development.
            return Err(fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "this server accepts logins only over TLS: connect with sslmode=require",
            ));
        }
        if matches!(message, PgWireFrontendMessage::Startup(_)) {
            let Some(admission) = self.service.sessions.try_admit() else {
                return Err(fatal(
                    sqlstate::TOO_MANY_CONNECTIONS,
                    "sorry, too many clients already (db.max_connections)",
                ));
            };
            if let Ok(mut slot) = self.admission.lock() {
                *slot = Some(admission);
            }
        }
        self.inner.on_startup(client, message).await
    }
}

/// Whether a login must be refused for coming in the clear: TLS is required (staging and
/// production) and the client is off loopback.
fn refuses_plain_login(require_tls: bool, secure: bool, peer: std::net::IpAddr) -> bool {
    require_tls && !secure && !peer.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_off_loopback_need_tls_where_it_is_required() {
        let remote: std::net::IpAddr = "192.0.2.7".parse().expect("address");
        let local: std::net::IpAddr = "127.0.0.1".parse().expect("address");
        let local6: std::net::IpAddr = "::1".parse().expect("address");
        assert!(refuses_plain_login(true, false, remote));
        assert!(!refuses_plain_login(true, true, remote), "over TLS");
        assert!(!refuses_plain_login(true, false, local), "loopback");
        assert!(!refuses_plain_login(true, false, local6), "loopback");
        assert!(!refuses_plain_login(false, false, remote), "development");
    }
}
