//! What the fake nova answers, checked in the order nova's metadata handler
//! checks (nova/api/metadata/handler.py, `_handle_instance_id_request`).
use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Request, Response, StatusCode, body::Incoming, header::CONTENT_TYPE, http::request::Parts,
};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

use crate::{RecordedRequest, State};

/// nova's password handler refuses bodies over 4 chunks of 255 characters.
const MAX_PASSWORD_SIZE: usize = 4 * 255;
/// Anything larger is not a metadata request.
const MAX_BODY: usize = 1 << 20;

/// The signature a proxy sends: hex HMAC-SHA256 of the instance ID under the
/// shared secret (what neutron's agent computes and nova recomputes).
pub fn sign_instance_id(secret: &[u8], instance_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(instance_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=UTF-8",
            body: body.into(),
        }
    }

    fn json(value: serde_json::Value) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            body: value.to_string(),
        }
    }
}

pub(crate) async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return respond(Answer::text(400, "request body too large or broken")),
    };
    let delay = state.behaviour.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let seq = {
        let mut next = state.next_seq.lock().unwrap();
        *next += 1;
        *next
    };
    let answer = decide(state, &parts, &body, seq);
    let record = RecordedRequest {
        seq,
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: answer.status,
    };
    if let Some(hook) = &state.on_request {
        hook(&record);
    }
    state.log.lock().unwrap().push(record);
    respond(answer)
}

fn respond(answer: Answer) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(CONTENT_TYPE, answer.content_type)
        .body(Full::new(Bytes::from(answer.body)))
        .expect("static response parts are valid")
}

/// The one value of a header, `Err` when it is there more than once.
fn single<'a>(parts: &'a Parts, name: &str) -> Result<Option<&'a str>, ()> {
    let mut values = parts.headers.get_all(name).iter();
    let first = values.next().map(|v| v.to_str().unwrap_or(""));
    if values.next().is_some() {
        Err(())
    } else {
        Ok(first)
    }
}

fn decide(state: &State, parts: &Parts, body: &[u8], seq: u64) -> Answer {
    let path = parts.uri.path();
    // nova answers the version list before looking at any proxy header.
    if path.trim_end_matches('/').is_empty() {
        return Answer::text(200, "1.0\n2007-01-19\n2009-04-04\nlatest");
    }
    let (instance_id, tenant_id, signature) = match (
        single(parts, "x-instance-id"),
        single(parts, "x-tenant-id"),
        single(parts, "x-instance-id-signature"),
    ) {
        (Ok(None), _, _) => {
            return Answer::text(400, "X-Instance-ID header is missing from request.");
        }
        (_, _, Ok(None)) => {
            return Answer::text(
                400,
                "X-Instance-ID-Signature header is missing from request.",
            );
        }
        (_, Ok(None), _) => {
            return Answer::text(400, "X-Tenant-ID header is missing from request.");
        }
        (Err(()), _, _) => {
            return Answer::text(400, "Multiple X-Instance-ID headers found within request.");
        }
        (_, Err(()), _) => {
            return Answer::text(400, "Multiple X-Tenant-ID headers found within request.");
        }
        (_, _, Err(())) => return Answer::text(403, "Invalid proxy request signature."),
        (Ok(Some(i)), Ok(Some(t)), Ok(Some(s))) => (i, t, s),
    };
    // As nova: compare the hex digests in constant time; empty never matches.
    let expected = sign_instance_id(&state.secret, instance_id);
    if signature.is_empty() || !bool::from(expected.as_bytes().ct_eq(signature.as_bytes())) {
        return Answer::text(403, "Invalid proxy request signature.");
    }
    let mut behaviour = state.behaviour.lock().unwrap();
    if let Some(project) = behaviour.projects.get(instance_id)
        && project != tenant_id
    {
        return Answer::text(404, "Not Found");
    }
    if let Some((status, text)) = behaviour.scripted.get(path) {
        return Answer::text(*status, text.clone());
    }
    if path.trim_end_matches('/').ends_with("/password") {
        return match parts.method.as_str() {
            "GET" => Answer::text(
                200,
                behaviour
                    .passwords
                    .get(instance_id)
                    .cloned()
                    .unwrap_or_default(),
            ),
            "POST" if behaviour.passwords.contains_key(instance_id) => {
                Answer::text(409, "Conflict")
            }
            "POST" if body.len() > MAX_PASSWORD_SIZE => Answer::text(400, "Request is too large."),
            "POST" => {
                let password = String::from_utf8_lossy(body).into_owned();
                behaviour.passwords.insert(instance_id.into(), password);
                Answer::text(200, "")
            }
            _ => Answer::text(400, "GET and POST only are supported."),
        };
    }
    if let Some(file) = &state.user_data_file
        && (path.ends_with("/user_data") || path.ends_with("/user-data"))
    {
        return match std::fs::read_to_string(file) {
            Ok(text) => Answer::text(200, text),
            Err(_) => Answer::text(404, "Not Found"),
        };
    }
    let forwarded_for = single(parts, "x-forwarded-for")
        .ok()
        .flatten()
        .unwrap_or("");
    if path.starts_with("/openstack/") && path.ends_with("/meta_data.json") {
        return Answer::json(serde_json::json!({
            "uuid": instance_id,
            "project_id": tenant_id,
            "name": format!("fake-{}", instance_id.get(..8).unwrap_or(instance_id)),
            "seq": seq,
        }));
    }
    let known_tree = ["/openstack", "/latest", "/2"]
        .iter()
        .any(|prefix| path.starts_with(prefix));
    if !known_tree || path.contains("/missing") {
        return Answer::text(404, "Not Found");
    }
    Answer::json(serde_json::json!({
        "instance_id": instance_id,
        "tenant_id": tenant_id,
        "forwarded_for": forwarded_for,
        "method": parts.method.as_str(),
        "path": path,
        "query": parts.uri.query(),
        "seq": seq,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_python_hmac() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"secret", b"abc", hashlib.sha256).hexdigest())'
        assert_eq!(
            sign_instance_id(b"secret", "abc"),
            "9946dad4e00e913fc8be8e5d3f7e110a4a9e832f83fb09c345285d78638d8a0e"
        );
    }
}
