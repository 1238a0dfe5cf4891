//! Where mail for other domains goes, by environment: development captures everything (nothing
//! leaves the machine), staging sends only to `mail.staging_allowlist` and captures the rest,
//! production queues everything for delivery.

use common::Environment;

use crate::store::Target;

/// What the queue does with a recipient when its turn comes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    Send,
    /// Not sent: a copy goes to this capture mailbox instead.
    Capture(Target),
    /// Not sent, and no local account to hold a copy (staging, a bounce to elsewhere).
    Withhold,
}

/// The environment's rule for outbound mail.
#[derive(Debug, Clone)]
pub struct Policy {
    environment: Environment,
    /// Development's capture account (`dev@localhost`).
    capture_account: String,
    allowlist: Vec<String>,
}

impl Policy {
    pub fn new(environment: Environment, capture_account: &str, allowlist: &[String]) -> Self {
        Self {
            environment,
            capture_account: capture_account.to_owned(),
            allowlist: allowlist.iter().map(|p| p.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether `recipient` matches the staging allowlist (`a@b.c` or `*@b.c`).
    pub fn allowed(&self, recipient: &str) -> bool {
        let recipient = recipient.to_ascii_lowercase();
        self.allowlist
            .iter()
            .any(|pattern| match pattern.strip_prefix("*@") {
                Some(domain) => recipient.rsplit_once('@').is_some_and(|(_, d)| d == domain),
                None => *pattern == recipient,
            })
    }

    /// Checked again when the queue is about to send (the entry may have been queued under
    /// another environment, or be a bounce): whether `recipient` may be sent to now, and if
    /// not where the copy goes instead. `account` is the account that submitted it, if any.
    pub fn release(&self, recipient: &str, account: Option<&str>) -> Release {
        match self.environment {
            Environment::Production => Release::Send,
            Environment::Staging if self.allowed(recipient) => Release::Send,
            Environment::Development => Release::Capture(Target::captured(&self.capture_account)),
            Environment::Staging => match account {
                Some(account) => Release::Capture(Target::captured(account)),
                None => Release::Withhold,
            },
        }
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// Where one copy for `recipient` (in another domain) goes, sent by `account`.
    pub fn outbound(&self, recipient: &str, account: &str) -> Target {
        match self.environment {
            Environment::Development => Target::captured(&self.capture_account),
            Environment::Staging if self.allowed(recipient) => Target::Queue {
                recipient: recipient.to_owned(),
            },
            Environment::Staging => {
                tracing::info!(%recipient, %account, "staging: not on mail.staging_allowlist, captured");
                Target::captured(account)
            }
            Environment::Production => Target::Queue {
                recipient: recipient.to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_environment_has_its_rule() {
        let allow = vec!["ops@example.org".to_owned(), "*@partner.test".to_owned()];
        let dev = Policy::new(Environment::Development, "dev@localhost", &allow);
        assert_eq!(
            dev.outbound("ops@example.org", "a@x.test"),
            Target::captured("dev@localhost")
        );
        let staging = Policy::new(Environment::Staging, "dev@localhost", &allow);
        assert!(matches!(
            staging.outbound("OPS@example.org", "a@x.test"),
            Target::Queue { .. }
        ));
        assert!(matches!(
            staging.outbound("bob@partner.test", "a@x.test"),
            Target::Queue { .. }
        ));
        assert_eq!(
            staging.outbound("eve@else.test", "a@x.test"),
            Target::captured("a@x.test")
        );
        // At send time too, whatever was queued.
        assert_eq!(
            dev.release("ops@example.org", Some("a@x.test")),
            Release::Capture(Target::captured("dev@localhost"))
        );
        assert_eq!(staging.release("bob@partner.test", None), Release::Send);
        assert_eq!(
            staging.release("eve@else.test", Some("a@x.test")),
            Release::Capture(Target::captured("a@x.test"))
        );
        assert_eq!(staging.release("eve@else.test", None), Release::Withhold);
        let production = Policy::new(Environment::Production, "dev@localhost", &[]);
        assert_eq!(production.release("eve@else.test", None), Release::Send);
        let production = Policy::new(Environment::Production, "dev@localhost", &allow);
        assert!(matches!(
            production.outbound("eve@else.test", "a@x.test"),
            Target::Queue { .. }
        ));
    }
}
