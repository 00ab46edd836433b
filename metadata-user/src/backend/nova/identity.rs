//! Signed identity in nova mode. nova serves none of these paths, so the
//! daemon answers them when it has a key (without one they go to nova,
//! which answers 404). The instance and project come from the port; the
//! zone and the EC2 values from nova's own answers for that instance,
//! through the cache (a guest that crawled its metadata has them there).
use std::sync::Arc;

use bytes::Bytes;
use hyper::{HeaderMap, Method, StatusCode, header::HeaderValue, http::uri::PathAndQuery};

use super::{ForwardTarget, NovaBackend, backend::Upstream, forward::Answer};
use crate::backend::identity::{
    APPLICATION_JWT, Identity, IdentityResource, IdentityRoute, InstanceFacts, jwt,
};

const AWS_TEXT_PLAIN: &str = "text/plain";

impl NovaBackend {
    /// The answer to an identity request under `identity`.
    pub(super) async fn identity_answer(
        &self,
        identity: &Arc<Identity>,
        target: &ForwardTarget,
        route: IdentityRoute,
        query: Option<&str>,
        now: u64,
    ) -> Answer {
        if let IdentityRoute::Aws(IdentityResource::Listing) = route {
            return match Identity::aws(
                Some(identity),
                IdentityResource::Listing,
                &placeholder(target),
            ) {
                Ok(Some(listing)) => text(listing, "text/plain; charset=UTF-8"),
                _ => Answer::local(StatusCode::NOT_FOUND, "Not Found"),
            };
        }
        // A bad audience is refused before nova is asked anything.
        let audience = match route {
            IdentityRoute::Jwt => match jwt::audience(query) {
                Ok(audience) => Some(audience),
                Err(explanation) => return Answer::local(StatusCode::BAD_REQUEST, explanation),
            },
            IdentityRoute::Aws(_) => None,
        };
        let facts = match self.facts(target).await {
            Ok(facts) => facts,
            Err(failure) => return failure,
        };
        let result = match (route, audience) {
            (IdentityRoute::Jwt, Some(audience)) => identity
                .jwt(&facts, &audience, now)
                .map(|token| Some((token, APPLICATION_JWT))),
            (IdentityRoute::Aws(resource), _) => Identity::aws(Some(identity), resource, &facts)
                .map(|body| body.map(|body| (body, AWS_TEXT_PLAIN))),
            (IdentityRoute::Jwt, None) => Ok(None),
        };
        match result {
            Ok(Some((body, content_type))) => text(body, content_type),
            Ok(None) => Answer::local(StatusCode::NOT_FOUND, "Not Found"),
            Err(err) => {
                tracing::error!(instance = %target.instance_id, "signing an identity: {err:#}");
                Answer::local(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Signing failed; see the daemon's log.",
                )
            }
        }
    }

    /// The instance's facts: uuid and project from the port; the rest from
    /// nova. Without nova's meta_data.json (nova down, 404) the guest gets
    /// that failure: an identity is not signed from guesses.
    async fn facts(&self, target: &ForwardTarget) -> Result<InstanceFacts, Answer> {
        let get = |path: &'static str| {
            let upstream = Upstream {
                method: Method::GET,
                headers: HeaderMap::new(),
                path_and_query: PathAndQuery::from_static(path),
                body: Bytes::new(),
            };
            self.exchange_cached(target, upstream)
        };
        let (meta_data, instance_id, ami_id, instance_type, local_ipv4, kernel_id, ramdisk_id) = tokio::join!(
            get("/openstack/latest/meta_data.json"),
            get("/latest/meta-data/instance-id"),
            get("/latest/meta-data/ami-id"),
            get("/latest/meta-data/instance-type"),
            get("/latest/meta-data/local-ipv4"),
            get("/latest/meta-data/kernel-id"),
            get("/latest/meta-data/ramdisk-id"),
        );
        if meta_data.status != StatusCode::OK {
            return Err(meta_data);
        }
        let meta_data: serde_json::Value =
            serde_json::from_slice(&meta_data.body).unwrap_or_default();
        let fallback = placeholder(target);
        let or = |answer: &Answer, default: String| value_of(answer).unwrap_or(default);
        Ok(InstanceFacts {
            availability_zone: meta_data["availability_zone"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or(fallback.availability_zone.clone()),
            ec2_instance_id: or(&instance_id, fallback.ec2_instance_id.clone()),
            image_id: or(&ami_id, fallback.image_id.clone()),
            instance_type: or(&instance_type, String::new()),
            private_ip: or(&local_ipv4, fallback.private_ip.clone()),
            kernel_id: value_of(&kernel_id),
            ramdisk_id: value_of(&ramdisk_id),
            ..fallback
        })
    }
}

/// What the port alone says (and the shape of the local defaults).
fn placeholder(target: &ForwardTarget) -> InstanceFacts {
    InstanceFacts {
        uuid: target.instance_id,
        project_id: Some(target.project_id.clone()),
        availability_zone: "nova".to_owned(),
        ec2_instance_id: format!("i-{}", &target.instance_id.simple().to_string()[..8]),
        image_id: "ami-00000000".to_owned(),
        instance_type: String::new(),
        private_ip: target.guest_addr.to_string(),
        kernel_id: None,
        ramdisk_id: None,
    }
}

/// A 200 text answer's value, trimmed.
fn value_of(answer: &Answer) -> Option<String> {
    (answer.status == StatusCode::OK)
        .then(|| String::from_utf8_lossy(&answer.body).trim().to_owned())
        .filter(|value| !value.is_empty())
}

fn text(body: String, content_type: &'static str) -> Answer {
    Answer::new(
        StatusCode::OK,
        Some(HeaderValue::from_static(content_type)),
        Bytes::from(body),
    )
}
