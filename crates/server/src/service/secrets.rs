//! A namespace's secrets as stored: sealed values under names. Values are sealed and opened
//! with the namespace's data key by [`crate::identity`] before and after; nothing here ever sees
//! a value in the clear.

use bulkhead_core::ids::{self, prefix};
use bulkhead_core::validate;
use bulkhead_store::SecretRow;

use super::{ServiceError, ServiceResult};
use crate::state::AppState;
use crate::time::now_ms;

/// Stores `sealed` under `name`, replacing the value of a secret of that name. Returns the
/// stored row and whether it is new.
pub async fn put(state: &AppState, namespace: &str, name: String, sealed: Vec<u8>) -> ServiceResult<(SecretRow, bool)> {
    let now = now_ms();
    let mut row = SecretRow {
        id: ids::new_id(prefix::SECRET),
        namespace: namespace.to_owned(),
        name,
        sealed,
        created_at_ms: now,
        updated_at_ms: now,
    };
    let created = state.store.put_secret(&row).await?;
    if !created {
        if let Some(stored) = state.store.get_secret(namespace, &row.name).await? {
            row = stored;
        }
    }
    Ok((row, created))
}

/// A page of the namespace's secrets, by name.
pub async fn list(state: &AppState, namespace: &str, after: Option<&str>, limit: u32) -> ServiceResult<Vec<SecretRow>> {
    Ok(state.store.list_secrets(namespace, after, limit).await?)
}

/// Deletes the secret `name`; a name that is not valid names no secret.
pub async fn delete(state: &AppState, namespace: &str, name: &str) -> ServiceResult<()> {
    if validate::name("name", name).is_err() || !state.store.delete_secret(namespace, name).await? {
        return Err(ServiceError::NotFound(format!("secret {name:?} not found")));
    }
    Ok(())
}

/// Secret `name` of namespace `ns`, sealed, if it exists.
pub async fn get(state: &AppState, ns: &str, name: &str) -> ServiceResult<Option<SecretRow>> {
    Ok(state.store.get_secret(ns, name).await?)
}
