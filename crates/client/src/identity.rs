//! Who may do what in a namespace: its single sign-on settings, its Cedar policies, and the
//! secrets policies hand to sandboxes.

use bulkhead_api::{CreatePolicy, CreateSecret, ExplainRequest, ExplainResult, IdentityConfig, Page, Policy, Secret};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::{namespace_path, Client, Result};

/// What setting a secret did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretSet {
    #[serde(flatten)]
    pub secret: Secret,
    /// `true` when the secret is new (HTTP 201), `false` when its value was replaced (HTTP 200).
    pub created: bool,
}

impl Client {
    /// The namespace's single sign-on settings; `oidc` is `None` when it has none.
    pub async fn get_identity(&self, ns: &str) -> Result<IdentityConfig> {
        self.send(self.request(Method::GET, &namespace_path(ns, "/identity"))).await
    }

    /// Replaces the namespace's single sign-on settings; `oidc: None` turns single sign-on off.
    pub async fn set_identity(&self, ns: &str, req: &IdentityConfig) -> Result<IdentityConfig> {
        self.send(self.request(Method::PUT, &namespace_path(ns, "/identity")).json(req)).await
    }

    /// Adds a Cedar policy; the server refuses one that does not parse or match the schema.
    pub async fn create_policy(&self, ns: &str, req: &CreatePolicy) -> Result<Policy> {
        self.create_in(ns, "/policies", req).await
    }

    /// A page of the namespace's policies.
    pub async fn list_policies(&self, ns: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Policy>> {
        self.list_in(ns, "/policies", limit, cursor).await
    }

    /// Deletes a policy of the namespace.
    pub async fn delete_policy(&self, ns: &str, id: &str) -> Result<()> {
        self.delete_in(ns, "/policies", id).await
    }

    /// How the namespace's policies would decide a request, without making it.
    pub async fn explain(&self, ns: &str, req: &ExplainRequest) -> Result<ExplainResult> {
        self.send(self.request(Method::POST, &namespace_path(ns, "/authz/explain")).json(req)).await
    }

    /// Bulkhead's Cedar schema, in Cedar's schema syntax.
    pub async fn policy_schema(&self) -> Result<String> {
        let answer = self.send_raw(self.request(Method::GET, "/v1/policy-schema")).await?;
        let (status, call) = (answer.status(), answer.call.clone());
        let bytes = answer.bounded().await?;
        String::from_utf8(bytes).map_err(|_| call.unexpected(status, "the schema is not UTF-8 text"))
    }

    /// Creates a secret, or replaces the value of the one of that name.
    pub async fn set_secret(&self, ns: &str, req: &CreateSecret) -> Result<SecretSet> {
        let builder = self.request(Method::POST, &namespace_path(ns, "/secrets")).json(req);
        let answer = self.send_raw(builder).await?;
        let created = answer.status() == StatusCode::CREATED.as_u16();
        Ok(SecretSet { secret: answer.json().await?, created })
    }

    /// A page of the namespace's secrets: names and times, never values.
    pub async fn list_secrets(&self, ns: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<Page<Secret>> {
        self.list_in(ns, "/secrets", limit, cursor).await
    }

    /// Deletes a secret.
    pub async fn delete_secret(&self, ns: &str, name: &str) -> Result<()> {
        self.delete_in(ns, "/secrets", name).await
    }
}
