//! `/openstack/<version>/password`, as nova's `password.py`
//! `handle_password`: the guest posts its (encrypted) admin password once;
//! anyone with the instance's key can read it back later.
use bytes::Bytes;

use super::{
    PasswordStore,
    response::{ApiError, Document, TEXT_HTML},
};

use crate::state::instance::MAX_PASSWORD_BYTES;

/// GET: the stored password, or an empty 200 when none was set. nova returns
/// the string straight to webob, so the type is webob's default HTML. A
/// store that cannot be read is a 500, not an empty password.
pub fn read(store: &dyn PasswordStore, uuid: &uuid::Uuid) -> Result<Document, ApiError> {
    Ok(Document::new(
        store.password(uuid)?.unwrap_or_default(),
        TEXT_HTML,
    ))
}

/// The first check nova makes on a POST, before it looks at the body: a
/// password that is already set cannot be replaced (409).
pub fn check_unset(store: &dyn PasswordStore, uuid: &uuid::Uuid) -> Result<(), ApiError> {
    match store.password(uuid)? {
        Some(_) => Err(ApiError::Conflict),
        None => Ok(()),
    }
}

/// POST with the body read: over 1020 bytes is 400 ("Request is too
/// large."), otherwise the body is stored. An empty body stores nothing,
/// which is what nova's empty chunks amount to.
pub fn write(
    store: &dyn PasswordStore,
    uuid: &uuid::Uuid,
    body: &[u8],
) -> Result<Document, ApiError> {
    check_unset(store, uuid)?;
    if body.len() > MAX_PASSWORD_BYTES {
        return Err(ApiError::BadRequest {
            explanation: Some("Request is too large."),
        });
    }
    // nova decodes the body as UTF-8 (and fails with a 500 when it is not).
    let password =
        std::str::from_utf8(body).map_err(|_| ApiError::BadRequest { explanation: None })?;
    if !password.is_empty() {
        // Another POST may have won since `check_unset` (409); a store
        // failure is a 500.
        store.set_password(uuid, password)?;
    }
    Ok(Document::new(Bytes::new(), TEXT_HTML))
}
