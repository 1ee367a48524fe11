//! Mutual challenge-response: each side proves it knows the shared secret
//! by MACing both sides' fresh random challenges, bound to its role (so a
//! proof cannot be reflected back). Verification is constant-time.

use crate::secret::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Which end of the link is proving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The node that dialed.
    Dialer,
    /// The node that accepted.
    Listener,
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The peer's proof does not match: it does not know the secret.
    #[error("peer {0:?} failed authentication (wrong secret?)")]
    BadProof(String),
    /// The peer refused our proof.
    #[error("peer refused the link: {0}")]
    Refused(String),
    /// The peer sent something other than the next handshake message.
    #[error("unexpected {0} message during the handshake")]
    Unexpected(&'static str),
}

/// This node's identity and key for handshakes.
#[derive(Clone, Debug)]
pub struct Authenticator {
    node: String,
    secret: Secret,
}

impl Authenticator {
    /// `node` is the name this node announces.
    pub fn new(node: impl Into<String>, secret: Secret) -> Self {
        Authenticator {
            node: node.into(),
            secret,
        }
    }

    /// The name this node announces.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A fresh random challenge.
    pub(crate) fn nonce() -> [u8; 32] {
        let mut n = [0u8; 32];
        getrandom::getrandom(&mut n).expect("the OS random source works");
        n
    }

    fn mac(&self, role: Role, dialer_nonce: &[u8; 32], listener_nonce: &[u8; 32]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(self.secret.bytes()).expect("HMAC takes any key length");
        mac.update(match role {
            Role::Dialer => b"replaymig/1 dialer",
            Role::Listener => b"replaymig/1 listen",
        });
        mac.update(dialer_nonce);
        mac.update(listener_nonce);
        mac
    }

    /// The proof `role` sends for these challenges.
    pub(crate) fn prove(
        &self,
        role: Role,
        dialer_nonce: &[u8; 32],
        listener_nonce: &[u8; 32],
    ) -> Vec<u8> {
        self.mac(role, dialer_nonce, listener_nonce)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Checks, in constant time, a proof sent by `role`.
    pub(crate) fn verify(
        &self,
        role: Role,
        dialer_nonce: &[u8; 32],
        listener_nonce: &[u8; 32],
        proof: &[u8],
    ) -> bool {
        self.mac(role, dialer_nonce, listener_nonce)
            .verify_slice(proof)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_depend_on_secret_role_and_both_challenges() {
        let a = Authenticator::new("a", Secret::new("0123456789abcdef-shared").unwrap());
        let b = Authenticator::new("b", Secret::new("0123456789abcdef-shared").unwrap());
        let evil = Authenticator::new("evil", Secret::new("0123456789abcdef-OTHER!").unwrap());
        let (d, l) = (Authenticator::nonce(), Authenticator::nonce());
        let proof = a.prove(Role::Dialer, &d, &l);
        assert!(b.verify(Role::Dialer, &d, &l, &proof));
        assert!(
            !b.verify(Role::Listener, &d, &l, &proof),
            "no reflection across roles"
        );
        assert!(
            !b.verify(Role::Dialer, &l, &d, &proof),
            "bound to both challenges"
        );
        assert!(!evil.verify(Role::Dialer, &d, &l, &proof));
        assert!(!b.verify(Role::Dialer, &d, &l, &proof[..31]));
    }
}
