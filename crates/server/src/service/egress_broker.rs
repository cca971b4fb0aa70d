//! Brokered credentials, the server's side (PRODUCT.md, *Network egress*, *Brokered
//! credentials*): each namespace's CA, and what the gateway needs to broker a connection.
//!
//! A namespace's CA ([`NamespaceCa`], made by the runtime) is made on first use, sealed under
//! the namespace's data key with the associated data `egress-ca/<namespace>` (so the blob opens
//! nowhere else and as nothing else), and stored in `namespaces.egress_ca`; the first one stored
//! is the namespace's for good, even when two first uses race. Its certificate goes into every
//! sandbox that has credentials (`SandboxSpec::extra_ca_pem`); its key only ever goes to the
//! runtime's broker, which signs leaves for brokered hosts with it.
//!
//! **Invariant:** a credential's value is opened here only for a connection the decider
//! allowed, to a host the sandbox's own `egress.credentials` names, and is handed to the
//! gateway only; it is never logged.

use bulkhead_core::egress::SandboxEgress;
use bulkhead_runtime::egress::{BrokeredHeader, NamespaceCa};
use serde::{Deserialize, Serialize};

use super::{ServiceError, ServiceResult};
use crate::state::AppState;

/// The associated data of a namespace's sealed egress CA.
fn ca_aad(namespace: &str) -> Vec<u8> {
    format!("egress-ca/{namespace}").into_bytes()
}

/// What is sealed: the CA's certificate and key, PEM.
#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

fn internal(what: &'static str) -> impl FnOnce(String) -> ServiceError {
    move |e| ServiceError::Internal(format!("{what}: {e}"))
}

/// The namespace's CA, made, sealed and stored on its first use.
///
/// # Errors
/// `NotFound` for no such namespace; `Internal` when the stored CA does not open (another
/// master key, or tampered) or a new one cannot be made.
pub async fn namespace_ca(state: &AppState, namespace: &str) -> ServiceResult<NamespaceCa> {
    let key = crate::identity::data_key(state, namespace)
        .await
        .map_err(|e| internal("the namespace's data key")(e.to_string()))?;
    let aad = ca_aad(namespace);
    let sealed_ca = match state.store.get_egress_ca(namespace).await? {
        Some(stored) => stored,
        None => {
            let fresh = NamespaceCa::generate()?;
            let plain = serde_json::to_vec(&StoredCa { cert_pem: fresh.cert_pem, key_pem: fresh.key_pem })
                .map_err(|e| internal("sealing the egress CA")(e.to_string()))?;
            let sealed_ca = key.seal(&plain, &aad).map_err(|e| internal("sealing the egress CA")(e.to_string()))?;
            state.store.egress_ca(namespace, &sealed_ca).await?
        }
    };
    let plain = key.open(&sealed_ca, &aad).map_err(|e| internal("opening the egress CA")(e.to_string()))?;
    let ca: StoredCa = serde_json::from_slice(&plain).map_err(|e| internal("opening the egress CA")(e.to_string()))?;
    Ok(NamespaceCa { cert_pem: ca.cert_pem, key_pem: ca.key_pem })
}

/// The CA certificate (PEM) a new sandbox with `egress` must trust: the namespace's, when the
/// sandbox has credentials; `None` otherwise.
///
/// # Errors
/// As [`namespace_ca`].
pub async fn sandbox_ca_pem(
    state: &AppState,
    namespace: &str,
    egress: Option<&SandboxEgress>,
) -> ServiceResult<Option<String>> {
    match egress {
        Some(e) if !e.credentials.is_empty() => Ok(Some(namespace_ca(state, namespace).await?.cert_pem)),
        _ => Ok(None),
    }
}

/// For an allowed connection of a sandbox with `sandbox_egress` to `name` (the destination's
/// DNS name as the gateway found it): the header to add and the namespace's CA, when one of the
/// sandbox's credentials is for `name` (hosts compare without regard to case). `None` when none
/// is, and when the credential cannot be used now (its secret was deleted, is not text, or would
/// not make a header value; the CA does not open): the connection then goes through unbrokered,
/// and the reason is logged without the value.
pub async fn broker_for(
    state: &AppState,
    namespace: &str,
    sandbox_egress: &SandboxEgress,
    name: &str,
) -> Option<(BrokeredHeader, NamespaceCa)> {
    let cred = sandbox_egress.credentials.iter().find(|c| c.host.eq_ignore_ascii_case(name))?;
    let unusable = |why: String| -> Option<(BrokeredHeader, NamespaceCa)> {
        tracing::warn!(%namespace, host = %cred.host, secret = %cred.secret, reason = %why, "a brokered credential is not usable; the connection is not brokered");
        None
    };
    let row = match state.store.get_secret(namespace, &cred.secret).await {
        Ok(Some(row)) => row,
        Ok(None) => return unusable("its secret does not exist".into()),
        Err(e) => return unusable(e.to_string()),
    };
    let value = match crate::identity::open_secret(state, namespace, &cred.secret, &row.sealed).await {
        Ok(v) => v,
        Err(e) => return unusable(e.to_string()),
    };
    let Ok(secret) = String::from_utf8(value) else {
        return unusable("its secret is not UTF-8 text".into());
    };
    let value = cred.header_value(&secret);
    // A header value is visible ASCII, spaces and tabs (RFC 9110 section 5.5); anything else
    // could split the request.
    if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return unusable("its secret holds control characters".into());
    }
    match namespace_ca(state, namespace).await {
        Ok(ca) => Some((BrokeredHeader { name: cred.header.clone(), value }, ca)),
        Err(e) => unusable(e.to_string()),
    }
}
