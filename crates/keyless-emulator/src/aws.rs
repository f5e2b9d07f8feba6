//! AWS STS at `POST /` (and `GET /?Action=...`): `AssumeRoleWithWebIdentity`, unsigned, and
//! `GetCallerIdentity`, which checks the SigV4 signature made with credentials issued here.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;

use crate::control::{Fault, Service};
use crate::issuer::{SubjectClaims, TokenRejection};
use crate::sigv4::{self, Authorization, ReceivedRequest};
use crate::{SharedState, clock, ids};

const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
const VERSION: &str = "2011-06-15";
/// The dev role's MaxSessionDuration: IAM's default of one hour.
const MAX_SESSION: Duration = Duration::from_secs(3600);
/// How far `X-Amz-Date` may be from the server's clock.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// What `GetCallerIdentity` needs to recognise credentials issued by `AssumeRoleWithWebIdentity`.
#[derive(Clone, Debug)]
pub(crate) struct AwsSession {
    secret_access_key: String,
    session_token: String,
    arn: String,
    user_id: String,
    account: String,
}

/// An STS error: rendered as `ErrorResponse/Error/{Type,Code,Message}` + `RequestId`.
#[derive(Debug)]
struct StsError {
    status: StatusCode,
    code: String,
    message: String,
}

impl StsError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_owned(), message: message.into() }
    }

    fn from_fault(fault: Fault) -> Self {
        let code = fault.code.clone().unwrap_or_else(|| {
            match fault.status.as_u16() {
                403 => "AccessDenied",
                429 => "Throttling",
                500 => "InternalFailure",
                503 => "ServiceUnavailable",
                s if s >= 500 => "InternalFailure",
                _ => "ValidationError",
            }
            .to_owned()
        });
        Self { status: fault.status, message: fault.message(), code }
    }

    fn signature_mismatch(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "SignatureDoesNotMatch", message)
    }

    fn invalid_client_token() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "InvalidClientTokenId",
            "The security token included in the request is invalid.",
        )
    }
}

/// STS over quota: HTTP 400 `Throttling` "Rate exceeded", type Sender, no `Retry-After`
/// (docs/protocols.md 9).
pub(crate) fn throttled() -> Response {
    StsError::new(StatusCode::BAD_REQUEST, "Throttling", "Rate exceeded").into_response()
}

fn element(name: &str, text: &str) -> String {
    format!("<{name}>{}</{name}>", quick_xml::escape::escape(text))
}

fn xml_response(status: StatusCode, request_id: &str, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-RequestId", id);
    }
    response
}

impl IntoResponse for StsError {
    fn into_response(self) -> Response {
        let request_id = uuid::Uuid::new_v4().to_string();
        let kind = if self.status.is_server_error() { "Receiver" } else { "Sender" };
        tracing::info!(status = self.status.as_u16(), code = %self.code, "aws sts: rejected");
        let body = format!(
            "<ErrorResponse xmlns=\"{NAMESPACE}\">\n  <Error>\n    {}\n    {}\n    {}\n  </Error>\n  {}\n</ErrorResponse>\n",
            element("Type", kind),
            element("Code", &self.code),
            element("Message", &self.message),
            element("RequestId", &request_id),
        );
        xml_response(self.status, &request_id, body)
    }
}

fn success(operation: &str, result: &str) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    tracing::info!(operation, "aws sts: succeeded");
    let body = format!(
        "<{operation}Response xmlns=\"{NAMESPACE}\">\n  <{operation}Result>\n{result}  </{operation}Result>\n  \
         <ResponseMetadata>\n    {}\n  </ResponseMetadata>\n</{operation}Response>\n",
        element("RequestId", &request_id)
    );
    xml_response(StatusCode::OK, &request_id, body)
}

/// Query parameters, then form body parameters; the first occurrence of a name wins.
fn parameters(uri: &Uri, body: &[u8]) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let query = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes());
    for (k, v) in query.chain(url::form_urlencoded::parse(body)) {
        params.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    params
}

/// `POST /` and `GET /`: dispatch on `Action`.
pub(crate) async fn sts(
    State(state): State<SharedState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = parameters(&uri, &body);
    let action = params.get("Action").map(String::as_str).unwrap_or("");
    let version = params.get("Version").map(String::as_str);
    if version != Some(VERSION) || !matches!(action, "AssumeRoleWithWebIdentity" | "GetCallerIdentity") {
        let version = version.unwrap_or("NO_VERSION_SPECIFIED");
        return StsError::new(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!("Could not find operation {action} for version {version}"),
        )
        .into_response();
    }
    let result = if action == "AssumeRoleWithWebIdentity" {
        match state.gate.enter(Service::AwsSts).await {
            Some(fault) => match fault.malformed_response(Service::AwsSts) {
                Some(garbage) => return garbage,
                None => Err(StsError::from_fault(fault)),
            },
            None => assume_role_with_web_identity(&state, &params),
        }
    } else {
        let request = ReceivedRequest {
            method: method.as_str(),
            path: uri.path(),
            query: uri.query(),
            headers: &headers,
            authority: uri.authority().map(|a| a.as_str()),
            body: &body,
        };
        get_caller_identity(&state, &request)
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Collects AWS-style "N validation errors detected: ..." messages.
#[derive(Default)]
struct Validation(Vec<String>);

impl Validation {
    fn length(&mut self, field: &str, value: Option<&String>, min: usize, max: usize, echo: bool) {
        let Some(value) = value else {
            self.0.push(format!("Value null at '{field}' failed to satisfy constraint: Member must not be null"));
            return;
        };
        let shown = if echo { format!("Value '{value}'") } else { "Value".to_owned() };
        let len = value.chars().count();
        if len < min {
            self.0.push(format!(
                "{shown} at '{field}' failed to satisfy constraint: Member must have length greater than or equal to {min}"
            ));
        } else if len > max {
            self.0.push(format!(
                "{shown} at '{field}' failed to satisfy constraint: Member must have length less than or equal to {max}"
            ));
        }
    }

    fn into_result(self) -> Result<(), StsError> {
        match self.0.len() {
            0 => Ok(()),
            n => {
                let plural = if n == 1 { "error" } else { "errors" };
                Err(StsError::new(
                    StatusCode::BAD_REQUEST,
                    "ValidationError",
                    format!("{n} validation {plural} detected: {}", self.0.join("; ")),
                ))
            }
        }
    }
}

fn validate_assume_role(params: &HashMap<String, String>) -> Result<Duration, StsError> {
    let mut v = Validation::default();
    v.length("roleArn", params.get("RoleArn"), 20, 2048, true);
    v.length("roleSessionName", params.get("RoleSessionName"), 2, 64, true);
    if let Some(name) = params.get("RoleSessionName")
        && !name.chars().all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
    {
        v.0.push(format!(
            "Value '{name}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*"
        ));
    }
    // Never echo the token back, not even in an error.
    v.length("webIdentityToken", params.get("WebIdentityToken"), 4, 20_000, false);
    let mut duration = MAX_SESSION;
    if let Some(raw) = params.get("DurationSeconds") {
        match raw.parse::<u64>() {
            Ok(secs) if (900..=43_200).contains(&secs) => duration = Duration::from_secs(secs),
            Ok(_) => v.0.push(format!(
                "Value '{raw}' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 43200"
            )),
            Err(_) => {
                return Err(StsError::new(
                    StatusCode::BAD_REQUEST,
                    "MalformedInput",
                    format!("Invalid value for DurationSeconds: '{raw}' is not an integer"),
                ));
            }
        }
    }
    if let Some(policy) = params.get("Policy") {
        v.length("policy", Some(policy), 1, 2048, false);
    }
    let policy_arns = params.keys().filter(|k| k.starts_with("PolicyArns.member.") && k.ends_with(".arn")).count();
    if policy_arns > 10 {
        v.0.push(format!(
            "Value '[{policy_arns} items]' at 'policyArns' failed to satisfy constraint: Member must have length less than or equal to 10"
        ));
    }
    v.into_result()?;
    if let Some(policy) = params.get("Policy")
        && !serde_json::from_str::<serde_json::Value>(policy).is_ok_and(|p| p.is_object())
    {
        return Err(StsError::new(StatusCode::BAD_REQUEST, "MalformedPolicyDocument", "Syntax errors in policy."));
    }
    if duration > MAX_SESSION {
        return Err(StsError::new(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
        ));
    }
    Ok(duration)
}

fn token_error(rejection: TokenRejection, claims: Option<&SubjectClaims>) -> StsError {
    let invalid = |message: String| StsError::new(StatusCode::BAD_REQUEST, "InvalidIdentityToken", message);
    match rejection {
        TokenRejection::Malformed => invalid(
            "The ID Token provided is not a valid JWT. (You may see this error if you sent an Access Token)".into(),
        ),
        TokenRejection::UntrustedIssuer => invalid(format!(
            "No OpenIDConnect provider found in your account for {}",
            claims.map(|c| c.iss.as_str()).unwrap_or("")
        )),
        TokenRejection::BadSignature => invalid(
            "Couldn't retrieve verification key from your identity provider,  please reference \
             AssumeRoleWithWebIdentity documentation for requirements"
                .into(),
        ),
        TokenRejection::Expired { exp, now } => StsError::new(
            StatusCode::BAD_REQUEST,
            "ExpiredTokenException",
            format!("Token expired: current date/time {now} must be before the expiration date/time {exp}"),
        ),
        TokenRejection::NotYetValid { nbf, now } => {
            invalid(format!("Token is not yet valid: current date/time {now} is before its not-before date/time {nbf}"))
        }
    }
}

fn assume_role_with_web_identity(state: &SharedState, params: &HashMap<String, String>) -> Result<Response, StsError> {
    let duration = state.gate.faults.lifetime(Service::AwsSts, validate_assume_role(params)?);
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let (role_arn, session_name, token) = (get("RoleArn"), get("RoleSessionName"), get("WebIdentityToken"));
    let now = clock::now();
    let peeked = SubjectClaims::peek(token).ok();
    let claims = crate::actions::verify_trusted(state, token, now).map_err(|r| token_error(r, peeked.as_ref()))?;
    let ids = &state.identities;
    // The OIDC provider registered for the issuer lists one client id (audience).
    if !claims.aud.iter().any(|a| a == ids.aws_audience()) {
        return Err(StsError::new(StatusCode::BAD_REQUEST, "InvalidIdentityToken", "Incorrect token audience"));
    }
    // The role's trust policy: this provider, `aud` and `sub` of the dev service account.
    if !ids.is_aws_role(role_arn) || !ids.trusts_subject(&claims.sub) {
        return Err(StsError::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Not authorized to perform sts:AssumeRoleWithWebIdentity",
        ));
    }
    let role_name = role_arn.rsplit('/').next().unwrap_or(role_arn);
    let account = &ids.aws_account_id;
    let role_id = ids::aws_role_id(role_arn);
    let session = AwsSession {
        secret_access_key: ids::aws_secret_access_key(),
        session_token: ids::aws_session_token(),
        arn: format!("arn:aws:sts::{account}:assumed-role/{role_name}/{session_name}"),
        user_id: format!("{role_id}:{session_name}"),
        account: account.clone(),
    };
    let access_key_id = ids::aws_temporary_access_key_id();
    let expiration = now + duration;
    let provider = claims.iss.trim_start_matches("https://");
    let result = format!(
        "    {}\n    {}\n    <AssumedRoleUser>\n      {}\n      {}\n    </AssumedRoleUser>\n    <Credentials>\n      {}\n      {}\n      {}\n      {}\n    </Credentials>\n    {}\n",
        element("SubjectFromWebIdentityToken", &claims.sub),
        element("Audience", ids.aws_audience()),
        element("Arn", &session.arn),
        element("AssumedRoleId", &session.user_id),
        element("SessionToken", &session.session_token),
        element("SecretAccessKey", &session.secret_access_key),
        element("Expiration", &clock::rfc3339_seconds(expiration)),
        element("AccessKeyId", &access_key_id),
        element("Provider", &format!("arn:aws:iam::{account}:oidc-provider/{provider}")),
    );
    state.aws_sessions.insert(access_key_id, expiration, session, now);
    Ok(success("AssumeRoleWithWebIdentity", &result))
}

fn get_caller_identity(state: &SharedState, request: &ReceivedRequest<'_>) -> Result<Response, StsError> {
    let header_str = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let Some(authorization) = header_str("authorization") else {
        return Err(StsError::new(
            StatusCode::FORBIDDEN,
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
        ));
    };
    let incomplete = |m: String| StsError::new(StatusCode::BAD_REQUEST, "IncompleteSignature", m);
    let auth = Authorization::parse(authorization).map_err(incomplete)?;
    let amz_date = header_str("x-amz-date").ok_or_else(|| {
        incomplete("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.".into())
    })?;
    let signed_at = clock::parse_amz_date(amz_date)
        .ok_or_else(|| incomplete(format!("Date must be in ISO-8601 'basic format'. Got '{amz_date}'.")))?;

    let (expires, session) = state.aws_sessions.get(&auth.access_key_id).ok_or_else(StsError::invalid_client_token)?;
    let presented_token = header_str("x-amz-security-token").unwrap_or("");
    if !bool::from(presented_token.as_bytes().ct_eq(session.session_token.as_bytes())) {
        return Err(StsError::invalid_client_token());
    }
    let now = clock::now();
    if expires <= now {
        return Err(StsError::new(
            StatusCode::FORBIDDEN,
            "ExpiredToken",
            "The security token included in the request is expired",
        ));
    }
    check_scope(&auth, amz_date, signed_at, now)?;
    let mismatch = || {
        StsError::signature_mismatch(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret \
             Access Key and signing method. Consult the service documentation for details.",
        )
    };
    let canonical = sigv4::canonical_request(request, &auth.signed_headers).map_err(|_| mismatch())?;
    let expected = sigv4::expected_signature(&session.secret_access_key, &auth, amz_date, &canonical);
    if !bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
        return Err(mismatch());
    }
    let result = format!(
        "    {}\n    {}\n    {}\n",
        element("Arn", &session.arn),
        element("UserId", &session.user_id),
        element("Account", &session.account)
    );
    Ok(success("GetCallerIdentity", &result))
}

/// What STS checks of a signature's scope and date before the signature itself.
fn check_scope(auth: &Authorization, amz_date: &str, signed_at: SystemTime, now: SystemTime) -> Result<(), StsError> {
    if auth.service != "sts" {
        return Err(StsError::signature_mismatch("Credential should be scoped to correct service: 'sts'. "));
    }
    if auth.terminator != "aws4_request" {
        return Err(StsError::signature_mismatch(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'. ",
            auth.terminator
        )));
    }
    if !amz_date.starts_with(&auth.date) || auth.date.len() != 8 {
        return Err(StsError::signature_mismatch(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{amz_date}'.",
            auth.date,
            amz_date.get(..8).unwrap_or(amz_date)
        )));
    }
    if !auth.signed_headers.split(';').any(|h| h == "host") {
        return Err(StsError::signature_mismatch(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    if signed_at + MAX_SKEW < now {
        return Err(StsError::signature_mismatch(format!(
            "Signature expired: {amz_date} is now earlier than {} ({} - 15 min.)",
            clock::amz_date(now - MAX_SKEW),
            clock::amz_date(now)
        )));
    }
    if signed_at > now + MAX_SKEW {
        return Err(StsError::signature_mismatch(format!(
            "Signature not yet current: {amz_date} is still later than {} ({} + 15 min.)",
            clock::amz_date(now + MAX_SKEW),
            clock::amz_date(now)
        )));
    }
    Ok(())
}
