//! `--from` for a kine source: `sqlite:///path/to/state.db` or
//! `postgres://user:password@host:port/database?sslmode=…`.

use crate::error::{Error, Result};

/// A kine database, as `--from` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KineUrl {
    /// k3s's default: `/var/lib/rancher/k3s/server/db/state.db`.
    Sqlite { path: std::path::PathBuf },
    /// The URL as given (tokio-postgres reads it, see [`crate::kine::postgres`]).
    Postgres { url: String },
}

impl KineUrl {
    /// Whether `--from` names a kine database rather than etcd endpoints.
    pub fn is_kine(from: &str) -> bool {
        let f = from.trim();
        ["sqlite://", "postgres://", "postgresql://"]
            .iter()
            .any(|p| f.starts_with(p))
    }

    /// Parses a `--from` that [`KineUrl::is_kine`].
    pub fn parse(from: &str) -> Result<KineUrl> {
        let f = from.trim();
        if let Some(rest) = f.strip_prefix("sqlite://") {
            // `sqlite:///var/lib/…` is an absolute path, `sqlite://db/state.db` a relative one.
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(Error::BadInput(format!(
                    "{from:?} names no file: give sqlite:///path/to/state.db"
                )));
            }
            return Ok(KineUrl::Sqlite { path: path.into() });
        }
        if f.starts_with("postgres://") || f.starts_with("postgresql://") {
            return Ok(KineUrl::Postgres { url: f.to_string() });
        }
        Err(Error::BadInput(format!(
            "{from:?} is not a kine database URL (sqlite:///path or postgres://…)"
        )))
    }

    /// The database as logs and errors name it: the path, or the URL
    /// without its password.
    pub fn display(&self) -> String {
        match self {
            KineUrl::Sqlite { path } => format!("sqlite://{}", path.display()),
            KineUrl::Postgres { url } => redact_password(url),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{}{}:***{}", &url[..scheme_end + 3], user, &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kine_urls_are_told_from_etcd_endpoints() {
        assert!(KineUrl::is_kine(
            "sqlite:///var/lib/rancher/k3s/server/db/state.db"
        ));
        assert!(KineUrl::is_kine("postgres://u:p@h:5432/kine"));
        assert!(KineUrl::is_kine("postgresql://h/kine"));
        assert!(!KineUrl::is_kine("http://127.0.0.1:2379"));
        assert!(!KineUrl::is_kine("https://a:2379,https://b:2379"));
    }

    #[test]
    fn sqlite_paths_parse() {
        assert_eq!(
            KineUrl::parse("sqlite:///var/lib/rancher/k3s/server/db/state.db").unwrap(),
            KineUrl::Sqlite {
                path: "/var/lib/rancher/k3s/server/db/state.db".into()
            }
        );
        // kine's own DSN options after '?' are not part of the path.
        assert_eq!(
            KineUrl::parse("sqlite://db/state.db?_journal_mode=WAL").unwrap(),
            KineUrl::Sqlite {
                path: "db/state.db".into()
            }
        );
        assert!(KineUrl::parse("sqlite://").is_err());
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact_password("postgres://kine:s3cret@db:5432/kine?sslmode=require"),
            "postgres://kine:***@db:5432/kine?sslmode=require"
        );
        assert_eq!(redact_password("postgres://db/kine"), "postgres://db/kine");
        assert_eq!(
            redact_password("postgres://kine@db/kine"),
            "postgres://kine@db/kine"
        );
    }
}
