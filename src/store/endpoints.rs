//! How to reach an etcd cluster: the members' addresses from `--store`, and
//! the transport security and credentials from the `--etcd-*` flags.
//!
//! Owns the one rule that ties them together: `etcds://` means TLS to every
//! member and needs `--etcd-ca`; `etcd://` means plaintext and takes no TLS
//! flag. A mismatch is refused before anything connects. It holds the
//! password file's *path* only, never the password (read when connecting,
//! in `etcd/connect.rs`), so that no Debug output or error can show it; and
//! it never touches the network or the files.

use std::path::PathBuf;

/// The members of one etcd cluster and how to talk to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// `host:port` of each member.
    pub hosts: Vec<String>,
    /// `etcds://`: TLS to every member, verified against `security.ca`.
    pub tls: bool,
    pub security: EtcdSecurity,
}

/// The `--etcd-*` flags: PEM files for TLS and the etcd user to log in as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    /// CA bundle that signed the members' certificates (`--etcd-ca`).
    pub ca: Option<PathBuf>,
    /// Client certificate chain for clusters with `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    pub key: Option<PathBuf>,
    /// etcd user (`--etcd-user`); needs `password_file`.
    pub user: Option<String>,
    /// A file holding the user's password (one trailing newline ignored).
    pub password_file: Option<PathBuf>,
}

impl EtcdSecurity {
    pub fn is_empty(&self) -> bool {
        *self == EtcdSecurity::default()
    }

    fn has_tls_files(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

impl Endpoints {
    /// Parses `host:port[,host:port…]`, the part of `--store` between the
    /// scheme and the prefix.
    pub fn parse(hosts: &str, tls: bool, whole: &str) -> Result<Endpoints, String> {
        if hosts.contains('@') {
            // Not echoed: what precedes the '@' is likely a password.
            return Err("credentials do not belong in --store (a host has an '@'): \
                 give --etcd-user and --etcd-password-file"
                .to_string());
        }
        let hosts: Vec<String> = hosts.split(',').map(str::to_string).collect();
        for e in &hosts {
            let port = e
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(_))) if !host.is_empty()) {
                return Err(format!("{e:?} in {whole:?} is not host:port"));
            }
        }
        Ok(Endpoints {
            hosts,
            tls,
            security: EtcdSecurity::default(),
        })
    }

    /// These endpoints with the `--etcd-*` flags, if they fit the scheme.
    pub fn secured(self, security: EtcdSecurity) -> Result<Endpoints, String> {
        if self.tls && security.ca.is_none() {
            return Err(
                "etcds:// needs --etcd-ca: the PEM bundle of the CA that signed \
                 the etcd members' certificates"
                    .into(),
            );
        }
        if !self.tls && security.has_tls_files() {
            return Err(
                "--etcd-ca, --etcd-cert and --etcd-key are for TLS, but --store \
                 says etcd:// (plaintext): write etcds:// to use TLS"
                    .into(),
            );
        }
        if security.cert.is_some() != security.key.is_some() {
            return Err("--etcd-cert and --etcd-key go together".into());
        }
        if security.user.is_some() != security.password_file.is_some() {
            return Err("--etcd-user and --etcd-password-file go together".into());
        }
        Ok(Endpoints { security, ..self })
    }

    /// The URL of each member, as the etcd client takes them.
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls { "https" } else { "http" };
        self.hosts
            .iter()
            .map(|h| format!("{scheme}://{h}"))
            .collect()
    }
}

/// Shown in errors and logs: the scheme and hosts, nothing secret.
impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "etcds" } else { "etcd" };
        write!(f, "{scheme}://{}", self.hosts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> EtcdSecurity {
        EtcdSecurity {
            ca: Some("ca.pem".into()),
            cert: Some("c.pem".into()),
            key: Some("k.pem".into()),
            user: Some("tokend".into()),
            password_file: Some("pw".into()),
        }
    }

    #[test]
    fn credentials_in_the_store_url_are_refused_without_being_echoed() {
        let e = Endpoints::parse("root:hunter2@a:1", false, "etcd://root:hunter2@a:1").unwrap_err();
        assert!(e.contains("--etcd-password-file"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn tls_flags_need_etcds_and_etcds_needs_a_ca() {
        let plain = Endpoints::parse("a:1,b:2", false, "etcd://a:1,b:2").unwrap();
        let tls = Endpoints::parse("a:1", true, "etcds://a:1").unwrap();
        let err = plain.clone().secured(files()).unwrap_err();
        assert!(err.contains("write etcds://"), "{err}");
        let err = tls.clone().secured(EtcdSecurity::default()).unwrap_err();
        assert!(err.contains("etcds:// needs --etcd-ca"), "{err}");
        let ok = tls.secured(files()).unwrap();
        assert_eq!(ok.urls(), ["https://a:1"]);
        assert_eq!(ok.to_string(), "etcds://a:1");
        // A password over plaintext is etcd's choice to allow; so is ours.
        let user_only = EtcdSecurity {
            user: Some("u".into()),
            password_file: Some("pw".into()),
            ..EtcdSecurity::default()
        };
        assert_eq!(
            plain.secured(user_only).unwrap().urls(),
            ["http://a:1", "http://b:2"]
        );
    }

    #[test]
    fn halves_of_a_pair_are_refused() {
        let tls = Endpoints::parse("a:1", true, "etcds://a:1").unwrap();
        let no_key = EtcdSecurity {
            key: None,
            ..files()
        };
        assert!(
            tls.clone()
                .secured(no_key)
                .unwrap_err()
                .contains("go together")
        );
        let no_password = EtcdSecurity {
            password_file: None,
            ..files()
        };
        assert!(
            tls.secured(no_password)
                .unwrap_err()
                .contains("go together")
        );
    }
}
