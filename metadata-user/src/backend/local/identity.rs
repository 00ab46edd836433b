//! `/<version>/dynamic/instance-identity/...` and `/openstack/identity`
//! for the local backend: the instance's facts from its document, signed
//! by `backend::identity` (nova has no `dynamic` tree; this is the IMDS
//! extension SDKs use to learn their region and account, and what
//! verifiers check a guest's identity with).
use super::{
    ApiContext,
    paths::Ec2Version,
    response::{AWS_TEXT_PLAIN, ApiError, Document},
    view::InstanceView,
};
use crate::backend::identity::{APPLICATION_JWT, Identity, IdentityResource, InstanceFacts, jwt};

/// Answers the segments after `dynamic`.
pub fn lookup(
    ctx: &ApiContext,
    view: &InstanceView<'_>,
    version: Ec2Version,
    segments: &[String],
) -> Result<Document, ApiError> {
    // AWS added the dynamic category in 2009-04-04.
    if version < Ec2Version::V2009_04_04 {
        return Err(ApiError::NotFound);
    }
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let resource = match segments.as_slice() {
        [] => return Ok(Document::text("instance-identity/")),
        ["instance-identity", rest @ ..] => {
            IdentityResource::from_segments(rest).ok_or(ApiError::NotFound)?
        }
        _ => return Err(ApiError::NotFound),
    };
    let body = Identity::aws(ctx.identity.as_deref(), resource, &facts(view))
        .map_err(internal)?
        .ok_or(ApiError::NotFound)?;
    Ok(match resource {
        IdentityResource::Listing => Document::text(body),
        _ => Document::new(body, AWS_TEXT_PLAIN),
    })
}

/// `GET /openstack/identity?audience=AUD`: 404 without a key, 400 without
/// an audience.
pub fn jwt(
    ctx: &ApiContext,
    view: &InstanceView<'_>,
    query: Option<&str>,
) -> Result<Document, ApiError> {
    let identity = ctx.identity.as_deref().ok_or(ApiError::NotFound)?;
    let audience = jwt::audience(query).map_err(|explanation| ApiError::BadRequest {
        explanation: Some(explanation),
    })?;
    let token = identity
        .jwt(&facts(view), &audience, ctx.now_unix())
        .map_err(internal)?;
    Ok(Document::new(token, APPLICATION_JWT))
}

/// The instance as its identity shows it: the tap's instance, its document.
pub fn facts(view: &InstanceView<'_>) -> InstanceFacts {
    InstanceFacts {
        uuid: view.doc.uuid,
        project_id: view.project_id().map(str::to_owned),
        availability_zone: view.availability_zone().to_owned(),
        ec2_instance_id: view.ec2_instance_id(),
        image_id: view.ami_id().to_owned(),
        instance_type: view.instance_type().to_owned(),
        private_ip: view.local_ipv4().to_string(),
        kernel_id: view.kernel_id().map(str::to_owned),
        ramdisk_id: view.ramdisk_id().map(str::to_owned),
    }
}

fn internal(err: anyhow::Error) -> ApiError {
    tracing::error!("signing an identity: {err:#}");
    ApiError::Internal
}
