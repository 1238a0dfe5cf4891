//! Certificates by SNI: a site's own certificate when the client names one of its hosts, the
//! role's certificate otherwise. The table is rebuilt on reload.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use common::tls::CertStore;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::sites::Sites;

pub struct SniResolver {
    default: Arc<CertStore>,
    table: ArcSwap<Table>,
}

#[derive(Default)]
struct Table {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `.example.org` for `*.example.org`.
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("sites", &self.table.load().exact.len())
            .finish_non_exhaustive()
    }
}

impl SniResolver {
    pub fn new(default: Arc<CertStore>, sites: &Sites) -> Self {
        let resolver = Self {
            default,
            table: ArcSwap::from_pointee(Table::default()),
        };
        resolver.rebuild(sites);
        resolver
    }

    /// Loads every site's certificate afresh (which is also how they reload).
    pub fn rebuild(&self, sites: &Sites) {
        let mut table = Table::default();
        for site in &sites.list {
            let Some((cert, key)) = &site.tls else {
                continue;
            };
            let certified = match common::tls::load_certified_key(cert, key) {
                Ok(certified) => Arc::new(certified),
                Err(err) => {
                    tracing::error!(site = %site.name, error = %err, "site certificate not loaded");
                    continue;
                }
            };
            for host in &site.hosts {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => table
                        .wildcard
                        .push((suffix.to_owned(), Arc::clone(&certified))),
                    None => {
                        table.exact.insert(host, Arc::clone(&certified));
                    }
                }
            }
        }
        self.table.store(Arc::new(table));
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            let table = self.table.load();
            if let Some(certified) = table.exact.get(&name) {
                return Some(Arc::clone(certified));
            }
            if let Some((_, certified)) = table.wildcard.iter().find(|(suffix, _)| {
                name.ends_with(suffix.as_str()) && !name[..name.len() - suffix.len()].contains('.')
            }) {
                return Some(Arc::clone(certified));
            }
        }
        self.default.resolve(hello)
    }
}
