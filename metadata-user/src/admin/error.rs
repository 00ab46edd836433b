//! What the admin API answers a refused request with: one kind per HTTP
//! status, and the one-line message the CLI prints.
use hyper::StatusCode;

use super::wire::MAX_BODY_BYTES;
use crate::state::{FieldError, RegistryError};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The registry refused the write, or the store failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The path or body is malformed.
    #[error(transparent)]
    BadRequest(#[from] FieldError),
    /// No such endpoint, or no such instance.
    #[error("{0}")]
    NotFound(String),
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: hyper::Method, path: String },
    #[error("request body: larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
}

impl AdminError {
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::Registry(err) => match err {
                RegistryError::Invalid(_) | RegistryError::NoProject(_) => StatusCode::BAD_REQUEST,
                RegistryError::NotFound(_) => StatusCode::NOT_FOUND,
                RegistryError::Conflict(_) => StatusCode::CONFLICT,
                RegistryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status_and_one_line() {
        let cases = [
            (
                AdminError::from(RegistryError::Conflict("taken".into())),
                StatusCode::CONFLICT,
                "taken",
            ),
            (
                AdminError::from(FieldError::new("path", "\"%zz\" is not valid")),
                StatusCode::BAD_REQUEST,
                "path: \"%zz\" is not valid",
            ),
            (
                AdminError::MethodNotAllowed {
                    method: hyper::Method::PATCH,
                    path: "/v1/ports".into(),
                },
                StatusCode::METHOD_NOT_ALLOWED,
                "PATCH is not allowed on /v1/ports",
            ),
            (
                AdminError::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body: larger than 2097152 bytes",
            ),
        ];
        for (err, status, message) in cases {
            assert_eq!(err.status(), status);
            assert_eq!(err.to_string(), message);
        }
    }
}
