//! Access control: bearer tokens checked in constant time, and TLS (optionally mutual).
//!
//! Tokens come from a file (one per line) or the environment and are never logged. Each is
//! kept only as its SHA-256 digest; a presented token is hashed and compared with every
//! accepted digest in constant time, so neither content nor length leaks through timing.

use std::{path::Path, sync::Arc};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status, service::Interceptor};

use crate::cli::SecurityArgs;

/// Accepted bearer tokens, as digests.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<[u8; 32]>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} accepted, values hidden)", self.0.len())
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Reads tokens from `--auth-token-file` and `--auth-tokens`; empty means no check.
    pub fn load(args: &SecurityArgs) -> anyhow::Result<Self> {
        let mut raw: Vec<String> = args
            .auth_tokens
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(path) = &args.auth_token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?;
            raw.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_string),
            );
            if raw.is_empty() {
                bail!("the token file {} holds no tokens", path.display());
            }
        }
        for t in &raw {
            if t.len() < 16 {
                bail!("bearer tokens must be at least 16 characters long");
            }
        }
        Ok(Tokens(Arc::new(raw.iter().map(|t| digest(t)).collect())))
    }

    pub fn from_list(tokens: &[&str]) -> Self {
        Tokens(Arc::new(tokens.iter().map(|t| digest(t)).collect()))
    }

    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Constant-time check of a presented token against every accepted one.
    pub fn accepts(&self, presented: &str) -> bool {
        let d = digest(presented);
        let mut ok = subtle::Choice::from(0u8);
        for accepted in self.0.iter() {
            ok |= accepted.ct_eq(&d);
        }
        ok.into()
    }
}

/// A tonic interceptor requiring `authorization: Bearer <token>` when tokens are set.
#[derive(Clone, Debug)]
pub struct BearerAuth {
    tokens: Tokens,
    required: bool,
}

impl BearerAuth {
    pub fn new(tokens: Tokens, required: bool) -> Self {
        Self { tokens, required }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if !self.required || !self.tokens.enabled() {
            return Ok(req);
        }
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let token = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        });
        match token {
            Some(t) if self.tokens.accepts(t.trim()) => Ok(req),
            Some(_) => Err(Status::unauthenticated("the bearer token is not accepted")),
            None => Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            )),
        }
    }
}

/// The TLS configuration from `--tls-cert`, `--tls-key` and `--tls-client-ca`.
pub fn tls_config(
    args: &SecurityArgs,
) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
    let mut cfg = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &args.tls_client_ca {
        cfg = cfg
            .client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?))
            .client_auth_optional(false);
    }
    Ok(Some(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(a) = auth {
            r.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        r
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        let t = Tokens::from_list(&["correct-horse-battery-staple"]);
        assert!(t.accepts("correct-horse-battery-staple"));
        assert!(!t.accepts("correct-horse-battery-stapl"));
        assert!(!t.accepts(""));
        assert!(!format!("{t:?}").contains("horse"));
        let mut auth = BearerAuth::new(t, true);
        assert!(
            auth.call(req(Some("Bearer correct-horse-battery-staple")))
                .is_ok()
        );
        let e = auth
            .call(req(Some("Bearer wrong-token-wrong-token")))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            !e.message().contains("wrong-token"),
            "the presented token is not echoed"
        );
        assert_eq!(
            auth.call(req(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.call(req(Some("Basic abc"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn not_required_or_no_tokens_lets_everything_through() {
        assert!(
            BearerAuth::new(Tokens::from_list(&["x".repeat(20).as_str()]), false)
                .call(req(None))
                .is_ok()
        );
        assert!(
            BearerAuth::new(Tokens::default(), true)
                .call(req(None))
                .is_ok()
        );
    }

    #[test]
    fn token_file_is_read_and_short_tokens_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(
            &p,
            "# comment\nfirst-token-0123456789\n\nsecond-token-0123456789\n",
        )
        .unwrap();
        let args = SecurityArgs {
            auth_token_file: Some(p.clone()),
            ..Default::default()
        };
        let t = Tokens::load(&args).unwrap();
        assert!(t.accepts("second-token-0123456789"));
        std::fs::write(&p, "short\n").unwrap();
        assert!(
            Tokens::load(&args)
                .unwrap_err()
                .to_string()
                .contains("16 characters")
        );
    }
}
