//! The Cloudflare API v4 DNS provider: TXT create / list / delete on one zone, with a bearer
//! token, over Gate's one HTTP client path (`gate_rt::client`), on either runtime.
//!
//! Owns: request shapes, reading Cloudflare's `{success, errors, result}` envelope, finding
//! the zone by name when no zone id is configured. Must not: log or return the token.
//! Answers are read up to [`MAX_RESPONSE_BYTES`].

use std::sync::Mutex;

use bytes::Bytes;
use gate_core::config::{CloudflareConfig, Secret};
use gate_rt::client::{http_client, ClientSettings, HttpClient};
use gate_rt::Runtime;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;

use super::{unquote_txt, DnsError, DnsProvider, TxtRecord};

/// Cloudflare's API base URL.
pub const DEFAULT_CLOUDFLARE_API_URL: &str = "https://api.cloudflare.com/client/v4";

/// Largest API answer read, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// TTL of the TXT records written, in seconds (Cloudflare's minimum for non-Enterprise).
const TXT_TTL_SECONDS: u32 = 60;

const PROVIDER: &str = "Cloudflare";

/// How to reach Cloudflare.
#[derive(Clone)]
pub struct CloudflareSettings {
    /// API token with `Zone.DNS:Edit` on the zone.
    pub api_token: Secret,
    /// Zone id; when `None` the zone is looked up by name (needs `Zone:Read`).
    pub zone_id: Option<String>,
    /// API base URL without a trailing slash.
    pub api_url: String,
    /// Extra trusted roots for the API's HTTPS (tests).
    pub client: ClientSettings,
}

impl std::fmt::Debug for CloudflareSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudflareSettings")
            .field("api_token", &"<redacted>")
            .field("zone_id", &self.zone_id)
            .field("api_url", &self.api_url)
            .finish()
    }
}

impl CloudflareSettings {
    /// From `[dns.cloudflare]`.
    pub fn from_config(config: &CloudflareConfig) -> Result<Self, DnsError> {
        let api_token = config
            .api_token
            .clone()
            .ok_or_else(|| DnsError::Config("dns.cloudflare.api_token is not set".into()))?;
        let api_url = if config.api_url.trim().is_empty() {
            DEFAULT_CLOUDFLARE_API_URL.to_owned()
        } else {
            config.api_url.trim().trim_end_matches('/').to_owned()
        };
        Ok(Self {
            api_token,
            zone_id: config.zone_id.clone().filter(|z| !z.trim().is_empty()),
            api_url,
            client: ClientSettings::default(),
        })
    }
}

/// The Cloudflare DNS provider.
pub struct Cloudflare<R: Runtime> {
    client: HttpClient<R, Full<Bytes>>,
    token: Secret,
    api_url: String,
    /// The configured zone id, or the one found by name (cached).
    zone_id: Mutex<Option<String>>,
}

impl<R: Runtime> std::fmt::Debug for Cloudflare<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloudflare")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Envelope<T> {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    result: Option<T>,
}

#[derive(Deserialize)]
struct ApiMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct RecordJson {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    content: String,
}

#[derive(Deserialize)]
struct ZoneJson {
    id: String,
}

/// Cloudflare error codes that mean the token is not accepted.
const AUTH_ERROR_CODES: &[i64] = &[9103, 9106, 9109, 10000, 10001];

impl<R: Runtime> Cloudflare<R> {
    /// A client for these settings.
    pub fn new(rt: R, settings: CloudflareSettings) -> Self {
        Self {
            client: http_client(rt, &settings.client),
            token: settings.api_token,
            api_url: settings.api_url.trim_end_matches('/').to_owned(),
            zone_id: Mutex::new(settings.zone_id),
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<serde_json::Value>,
        operation: &str,
    ) -> Result<T, DnsError> {
        let transport = |detail: String| DnsError::Transport {
            provider: PROVIDER,
            operation: operation.to_owned(),
            detail,
        };
        let url = format!("{}{}", self.api_url, path_and_query);
        let body_bytes = match &body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| transport(e.to_string()))?),
            None => Bytes::new(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(&url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token.expose()),
            )
            .header(http::header::ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(body_bytes))
            .map_err(|e| DnsError::Config(format!("bad API URL {url}: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| transport(error_chain(&e)))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| transport(format!("reading the answer: {e}")))?
            .to_bytes();
        let envelope: Option<Envelope<T>> = serde_json::from_slice(&bytes).ok();
        let messages = envelope
            .as_ref()
            .map(|e| {
                e.errors
                    .iter()
                    .map(|m| format!("{} (code {})", m.message, m.code))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        let detail = if messages.is_empty() {
            format!("HTTP {}", status.as_u16())
        } else {
            format!("HTTP {}: {messages}", status.as_u16())
        };
        let auth_code = envelope
            .as_ref()
            .is_some_and(|e| e.errors.iter().any(|m| AUTH_ERROR_CODES.contains(&m.code)));
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN || auth_code {
            return Err(DnsError::Unauthorized {
                provider: PROVIDER,
                detail,
            });
        }
        let api_error = |detail: String| DnsError::Api {
            provider: PROVIDER,
            operation: operation.to_owned(),
            detail,
        };
        match envelope {
            Some(Envelope {
                success: true,
                result: Some(result),
                ..
            }) if status.is_success() => Ok(result),
            Some(_) => Err(api_error(detail)),
            None if status.is_success() => Err(api_error(format!(
                "HTTP {}: the answer is not Cloudflare's JSON envelope",
                status.as_u16()
            ))),
            None => Err(api_error(detail)),
        }
    }

    /// The zone id for `name`: the configured one, or found by walking up `name`'s labels.
    async fn zone_for(&self, name: &str) -> Result<String, DnsError> {
        if let Some(id) = self.cached_zone() {
            return Ok(id);
        }
        let labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).collect();
        // Zones have at least two labels; try the longest candidates first.
        for start in 0..labels.len().saturating_sub(1) {
            let candidate = labels.get(start..).unwrap_or_default().join(".");
            let zones: Vec<ZoneJson> = self
                .call(
                    Method::GET,
                    &format!("/zones?name={}", encode_query(&candidate)),
                    None,
                    &format!("look up the zone {candidate}"),
                )
                .await?;
            if let Some(zone) = zones.into_iter().next() {
                if let Ok(mut cached) = self.zone_id.lock() {
                    *cached = Some(zone.id.clone());
                }
                return Ok(zone.id);
            }
        }
        Err(DnsError::NoZone {
            provider: PROVIDER,
            name: name.to_owned(),
        })
    }

    fn cached_zone(&self) -> Option<String> {
        self.zone_id.lock().ok().and_then(|z| z.clone())
    }
}

impl<R: Runtime> DnsProvider for Cloudflare<R> {
    async fn create_txt(&self, name: &str, value: &str) -> Result<String, DnsError> {
        let zone = self.zone_for(name).await?;
        let record: RecordJson = self
            .call(
                Method::POST,
                &format!("/zones/{}/dns_records", encode_path(&zone)),
                Some(serde_json::json!({
                    "type": "TXT",
                    "name": name,
                    // Cloudflare recommends quoted TXT content; it accepts both.
                    "content": format!("\"{}\"", unquote_txt(value)),
                    "ttl": TXT_TTL_SECONDS,
                })),
                &format!("create the TXT record {name}"),
            )
            .await?;
        Ok(record.id)
    }

    async fn delete_txt(&self, name: &str, id: &str) -> Result<(), DnsError> {
        let zone = self.zone_for(name).await?;
        let result: Result<serde_json::Value, DnsError> = self
            .call(
                Method::DELETE,
                &format!(
                    "/zones/{}/dns_records/{}",
                    encode_path(&zone),
                    encode_path(id)
                ),
                None,
                &format!("delete the TXT record {name}"),
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            // Already gone (Cloudflare answers 404 with code 81044).
            Err(DnsError::Api { detail, .. }) if detail.starts_with("HTTP 404") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_txt(&self, name: &str) -> Result<Vec<TxtRecord>, DnsError> {
        let zone = self.zone_for(name).await?;
        let records: Vec<RecordJson> = self
            .call(
                Method::GET,
                &format!(
                    "/zones/{}/dns_records?type=TXT&name={}&per_page=100",
                    encode_path(&zone),
                    encode_query(name)
                ),
                None,
                &format!("list the TXT records {name}"),
            )
            .await?;
        Ok(records
            .into_iter()
            .map(|r| TxtRecord {
                id: r.id,
                name: r.name.trim_end_matches('.').to_ascii_lowercase(),
                value: unquote_txt(&r.content).to_owned(),
            })
            .collect())
    }
}

/// The error and its sources, one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Percent-encodes everything but unreserved characters.
fn encode_query(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn encode_path(segment: &str) -> String {
    encode_query(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encoding_keeps_dns_names_readable() {
        assert_eq!(encode_query("_acme-challenge.a.b"), "_acme-challenge.a.b");
        assert_eq!(encode_query("a b&c"), "a%20b%26c");
    }

    #[test]
    fn settings_debug_hides_the_token() {
        let settings = CloudflareSettings {
            api_token: Secret::new("very-secret-token"),
            zone_id: Some("z".into()),
            api_url: DEFAULT_CLOUDFLARE_API_URL.into(),
            client: ClientSettings::default(),
        };
        assert!(!format!("{settings:?}").contains("very-secret-token"));
    }
}
