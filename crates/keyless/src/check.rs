//! `keyless check`: loads the configuration as `keyless serve` does, reads each provider's
//! subject token, tries each exchange once and prints a report a human can act on: what is
//! wrong, how to fix it, and the cloud-side binding the token needs.
//!
//! What each cloud expects (audience, binding, error hints) comes from the adapters' `diagnose`
//! modules; this file only runs them in order and lays the answers out. It never prints a token
//! or a credential: only claims, expiry times and the adapters' error messages, which never
//! contain secrets.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyless_core::clock::SystemClock;
use keyless_core::{Attempt, Claims, Context, ExchangeError, SourceSpec, SubjectToken};
use keyless_provider::Diagnosis;

use crate::config::{Config, Overrides};
use crate::providers::{self, Origin, Sections, StartError};

/// One exchange per configured credential. Each upstream request is bounded by
/// `cache.exchange_timeout` in the provider's own client (`keyless_provider::upstream`), as in
/// `serve`; this bounds the whole diagnosis (a GCP exchange is two requests) as a backstop.
/// An exchange slower than [`crate::exec::PROGRESS_AFTER`] gets one progress line on stderr.
async fn exchange_once(d: &dyn Diagnosis, token: &SubjectToken, limit: Duration) -> Vec<Attempt> {
    let since = keyless_core::clock::Clock::now(&SystemClock);
    let exchange = tokio::time::timeout(limit.saturating_mul(3), d.exchange_once(token));
    tokio::pin!(exchange);
    let outcome = tokio::select! {
        outcome = &mut exchange => outcome,
        () = tokio::time::sleep(crate::exec::PROGRESS_AFTER) => {
            crate::exec::progress_line("keyless check", &d.identity(), since);
            exchange.await
        }
    };
    match outcome {
        Ok(attempts) => attempts,
        Err(_) => vec![Attempt {
            what: "the exchange".to_owned(),
            result: Err(ExchangeError::retryable(format!(
                "did not finish within cache.exchange_timeout ({})",
                humantime::format_duration(limit)
            ))
            .with_hint("the token service is slow or unreachable from here: check egress and HTTPS_PROXY")),
        }],
    }
}

/// How the report is written: for a person (`text`, printed as it is built) or for a script
/// (`json`, one object at the end; its schema is documented in docs/troubleshooting.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

/// The version of the JSON report's schema: raised on any change a script could trip on.
const SCHEMA_VERSION: u32 = 1;

/// One check as the JSON report lists it.
#[derive(Debug, serde::Serialize)]
struct CheckEntry {
    /// `keyless` for the configuration as a whole, else the provider (`aws`, `gcp`, `azure`).
    provider: String,
    /// `config`, `providers`, `routes`, `token`, `claims`, `expiry`, `audience`, `issuer`,
    /// `exchange`, `binding`.
    check: String,
    /// `ok`, `problem`, `note` (worth knowing, not a problem) or `info` (what was found).
    status: &'static str,
    message: String,
    /// Further lines: an upstream error, the binding's commands.
    details: Vec<String>,
    fix: Option<String>,
}

/// The report, printed as it is built (text) or kept for the end (JSON); counts the problems.
struct Report {
    output: Output,
    problems: Vec<String>,
    checks: Vec<CheckEntry>,
}

/// Width of the label column.
const LABEL: usize = 12;

/// Status words a text line starts with, left out of the JSON message (the status says it).
const PREFIXES: [&str; 3] = ["ok: ", "note: ", "PROBLEM: "];

impl Report {
    fn new(output: Output) -> Self {
        Self { output, problems: Vec::new(), checks: Vec::new() }
    }

    #[allow(clippy::print_stdout)] // the report is the command's output
    fn line(&self, text: &str) {
        if self.output == Output::Text {
            println!("{text}");
        }
    }

    /// `label` then `text`; further lines of `text` (TOML errors have several) stay in its column.
    fn print_item(&self, label: &str, text: &str) {
        for (i, line) in text.lines().enumerate() {
            let label = if i == 0 { label } else { "" };
            self.line(format!("  {label:<LABEL$}{line}").trim_end());
        }
    }

    /// One check: printed under its label, recorded for the JSON report.
    fn item(&mut self, provider: &str, check: &str, status: &'static str, text: &str) {
        self.print_item(check, text);
        let message = PREFIXES.iter().find_map(|p| text.strip_prefix(p)).unwrap_or(text).to_owned();
        self.checks.push(CheckEntry {
            provider: provider.to_owned(),
            check: check.to_owned(),
            status,
            message,
            details: Vec::new(),
            fix: None,
        });
    }

    /// A continuation line under the last item.
    fn more(&mut self, text: &str) {
        self.print_item("", text);
        if let Some(last) = self.checks.last_mut() {
            last.details.extend(text.lines().map(str::to_owned));
        }
    }

    /// The fix of the last item.
    fn fix(&mut self, fix: &str) {
        self.print_item("", &format!("fix: {fix}"));
        if let Some(last) = self.checks.last_mut() {
            last.fix = Some(fix.to_owned());
        }
    }

    fn problem(&mut self, provider: &str, label: &str, text: &str, fix: Option<&str>) {
        self.item(provider, label, "problem", &format!("PROBLEM: {text}"));
        if let Some(fix) = fix {
            self.fix(fix);
        }
        self.problems.push(format!("{provider} {label}"));
    }

    /// The JSON report (schema: docs/troubleshooting.md, "keyless check --output json").
    fn json(&self, config: Option<&std::path::Path>) -> serde_json::Value {
        let fixes: Vec<_> = self
            .checks
            .iter()
            .filter_map(|c| {
                let fix = c.fix.as_ref()?;
                Some(serde_json::json!({ "provider": c.provider, "check": c.check, "fix": fix }))
            })
            .collect();
        serde_json::json!({
            "schema_version": SCHEMA_VERSION,
            "config": config.map(|p| p.display().to_string()),
            "outcome": if self.problems.is_empty() { "ok" } else { "problems" },
            "problems": self.problems,
            "checks": self.checks,
            "fixes": fixes,
        })
    }
}

/// Runs the check; exit 0 when everything works, 1 on any problem.
pub async fn run(file: Option<PathBuf>, output: Output) -> ExitCode {
    // Logs would interleave with the report: only on request.
    if let Ok(filter) = std::env::var("KEYLESS_LOG")
        && let Err(e) = crate::logging::init_from_variable(Some(&filter), crate::config::LogFormat::Text)
    {
        return crate::fail(&e);
    }
    let mut report = Report::new(output);
    match &file {
        Some(path) => report.line(&format!("keyless check: {}", path.display())),
        None => report.line("keyless check: no --config; KEYLESS_* and the clouds' environment variables"),
    }
    report.line("");
    match crate::load_config(file.as_deref(), &Overrides::default()) {
        Ok((config, sections, skipped)) => check_config(&mut report, config, sections, &skipped).await,
        Err(e) => report.problem("keyless", "config", &e, None),
    }
    report.line("");
    let code = if report.problems.is_empty() {
        report.line("result: ok: every configured identity got a credential");
        ExitCode::SUCCESS
    } else {
        let n = report.problems.len();
        report.line(&format!(
            "result: {n} problem{} ({}): fix {}, then run keyless check again",
            if n == 1 { "" } else { "s" },
            report.problems.join(", "),
            if n == 1 { "it" } else { "them" }
        ));
        ExitCode::from(1)
    };
    if output == Output::Json {
        print_json(&report.json(file.as_deref()));
    }
    code
}

#[allow(clippy::print_stdout)] // the report is the command's output
fn print_json(value: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

async fn check_config(report: &mut Report, config: Config, sections: Sections, skipped: &[String]) {
    report.item(
        "keyless",
        "config",
        "ok",
        &format!("ok: listen {}, admin_listen {}", config.listen, config.admin_listen),
    );
    for name in skipped {
        report.more(&format!("note: {name} is not a keyless setting and is ignored"));
    }
    let ctx =
        Context::new(Arc::new(SystemClock), crate::metrics(), config.one_client_cache_policy(), config.watch_options());
    let limit = config.cache.exchange_timeout;
    let configured = providers::configure_all(sections, &ctx, &ctx.env());
    if configured.is_empty() {
        report.line("");
        report.problem("keyless", "providers", &StartError::NothingConfigured.to_string(), None);
        return;
    }
    // Exactly the check `serve` makes before it listens.
    let valid = configured.iter().filter_map(|p| p.configured.as_ref().ok().map(|c| c.as_ref()));
    if let Err(collision) = providers::check_routes(valid) {
        report.problem("keyless", "routes", &collision.to_string(), None);
    }
    for p in configured {
        report.line("");
        match p.configured.and_then(|c| c.diagnosis(&ctx).map_err(|e| e.to_string())) {
            Ok(d) => check_provider(report, p.name, p.origin, d.as_ref(), &ctx, limit).await,
            Err(e) => {
                report.line(&format!("{}:", p.name));
                report.problem(p.name, "config", &format!("{e} (from {})", p.origin), None);
            }
        }
    }
}

async fn check_provider(
    report: &mut Report,
    name: &'static str,
    origin: Origin,
    d: &dyn Diagnosis,
    ctx: &Context,
    limit: Duration,
) {
    report.line(&format!("{name}: {}", d.identity()));
    report.item(name, "config", "ok", &format!("ok (from {origin})"));
    let source = d.token_source();
    report.item(name, "token", "info", &source.to_string());
    if !matches!(source, SourceSpec::File(_)) {
        report.more("fetched once for this check (nothing of the token itself is shown)");
    }
    // A fetch (a slow command, an Actions endpoint) may outlast what opening the source waits for.
    let token = match ctx.token_source(&source).await.first_read().await {
        Ok(token) => token,
        Err(e) => {
            report.problem(name, "token", &e.to_string(), None);
            report.item(name, "exchange", "info", "not tried: there is no token to exchange");
            print_binding(report, name, d, None, d.expected_audience(), false);
            return;
        }
    };
    let claims = token.claims();
    let now = ctx.clock.now();
    report.item(name, "claims", "info", &describe_claims(claims, now));
    check_claims(report, name, claims, now, &source);

    let attempts = exchange_once(d, &token, limit).await;
    let all_ok = attempts.iter().all(|a| a.result.is_ok());
    let expected = d.expected_audience().to_owned();
    let audience_source = d.audience_source();
    let binding_audience = if d.accepts_audience(&claims.aud) {
        report.item(name, "audience", "ok", &format!("ok: the token has {expected}, {audience_source}"));
        expected.clone()
    } else if all_ok && !claims.aud.is_empty() {
        report.item(
            name,
            "audience",
            "note",
            &format!(
                "note: the token has [{}], not {expected} ({audience_source}), and the cloud accepted it",
                claims.aud.join(", ")
            ),
        );
        claims.aud[0].clone()
    } else {
        let has =
            if claims.aud.is_empty() { "no aud claim".to_owned() } else { format!("[{}]", claims.aud.join(", ")) };
        let fix = d.audience_fix(claims);
        report.problem(
            name,
            "audience",
            &format!("{name} expects {expected}, {audience_source}; the token has {has}"),
            Some(&fix),
        );
        expected.clone()
    };
    // The issuer no provider trusts: no fix below may propose registering it before the
    // issuer problem has been answered.
    let issuer_rejected = attempts.iter().any(|a| a.result.as_ref().is_err_and(|e| e.untrusted_issuer));
    let flagged_issuer = claims.iss.as_deref().filter(|_| issuer_rejected);
    if let Some(iss) = flagged_issuer {
        report.problem(
            name,
            "issuer",
            &format!("{name} trusts no identity provider for the token's issuer {iss}"),
            Some(&issuer_fix(&source)),
        );
    }
    for attempt in &attempts {
        match &attempt.result {
            Ok(expires_at) => report.item(
                name,
                "exchange",
                "ok",
                &format!("ok: {}: valid until {}", attempt.what, describe_time(*expires_at, now)),
            ),
            Err(e) => {
                let code = e.code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default();
                report.item(
                    name,
                    "exchange",
                    "problem",
                    &format!("PROBLEM: {} failed{code}{}", attempt.what, throttled(e)),
                );
                report.more(&e.message);
                if let Some(hint) = &e.hint {
                    match flagged_issuer.filter(|_| e.untrusted_issuer) {
                        Some(iss) => report.fix(&format!(
                            "fix the issuer problem above first (this exchange's usual advice names the token's \
                             issuer {iss}, which is only to be trusted if it is your cluster's)"
                        )),
                        None => report.fix(hint),
                    }
                }
                report.problems.push(format!("{name} exchange"));
            }
        }
    }
    // The binding for an issuer nobody trusts yet names it by placeholder: whether to trust it is
    // the question the issuer line asks.
    let mut shown = claims.clone();
    if flagged_issuer.is_some() {
        shown.iss = None;
    }
    print_binding(report, name, d, Some(&shown), &binding_audience, flagged_issuer.is_some());
}

/// What to do about a token whose issuer the cloud does not know: first doubt the token, then
/// (only if the issuer is the cluster's own) register it.
fn issuer_fix(source: &SourceSpec) -> String {
    let wrong = match source {
        SourceSpec::File(path) => format!(
            "token_file ({}) points at the wrong token: point it at the projected serviceAccountToken volume",
            path.display()
        ),
        other => format!("the token source ({other}) gives the wrong token"),
    };
    format!(
        "if this is not your cluster's issuer (kubectl get --raw /.well-known/openid-configuration shows it), {wrong}. \
         If it is, register it with the cloud as the binding below shows, with your issuer in place of the placeholder"
    )
}

/// How a throttled exchange is told apart: nothing is wrong with the configuration, the token
/// service is busy (docs/fleet.md).
fn throttled(e: &ExchangeError) -> String {
    if e.class != keyless_core::ErrorClass::Throttled {
        return String::new();
    }
    match e.retry_after {
        Some(wait) => {
            format!(": throttled by the token service, which asks to retry after {}", humantime::format_duration(wait))
        }
        None => ": throttled by the token service".to_owned(),
    }
}

/// Problems the claims show before any cloud is asked.
fn check_claims(report: &mut Report, name: &str, claims: &Claims, now: SystemTime, source: &SourceSpec) {
    if let Some(exp) = claims.exp.filter(|exp| *exp <= now) {
        report.problem(
            name,
            "expiry",
            &format!("the token expired at {}", describe_time(exp, now)),
            Some(&expiry_fix(source)),
        );
    }
    if claims.iss.is_none() || claims.sub.is_none() {
        let (what, fix) = match source {
            SourceSpec::File(_) => (
                "it is not a Kubernetes service-account token",
                "point token_file at a projected serviceAccountToken volume",
            ),
            _ => (
                "the cloud cannot match it to a trust",
                "the source must give an OIDC ID token (a JWT with iss and sub)",
            ),
        };
        report.problem(name, "claims", &format!("the token has no iss or no sub claim: {what}"), Some(fix));
    }
    if let SourceSpec::GithubActions { .. } = source {
        report.more(
            "note: GitHub sets sub to repo:ORG/REPO:environment:NAME when the job names an environment, else \
             repo:ORG/REPO:ref:refs/heads/BRANCH (tags: ref:refs/tags/TAG; pull requests: pull_request); the \
             binding below trusts exactly this job's sub",
        );
    }
}

/// How to get an unexpired token from `source`.
fn expiry_fix(source: &SourceSpec) -> String {
    match source {
        SourceSpec::File(token_file) => format!(
            "{} must be the token the kubelet projects (a serviceAccountToken volume source), which it rotates \
             before expiry; a copied token goes stale. If it is projected, check the node's clock",
            token_file.display()
        ),
        SourceSpec::GithubActions { .. } => {
            "a GitHub Actions token lives 5 minutes and keyless fetches a new one for every read: check this \
             machine's clock"
                .to_owned()
        }
        SourceSpec::Env(var) => format!(
            "the token in {var} is fixed for the process (GitLab id_tokens live as long as the job): run keyless in \
             the job that received it"
        ),
        SourceSpec::Url(_) | SourceSpec::Command(_) => {
            "the source returned an expired token: fix the service or program that issues it".to_owned()
        }
    }
}

/// `issuer_withheld`: the token's issuer is replaced by a placeholder (the issuer problem).
fn print_binding(
    report: &mut Report,
    name: &str,
    d: &dyn Diagnosis,
    claims: Option<&Claims>,
    audience: &str,
    issuer_withheld: bool,
) {
    let intro = match claims {
        Some(_) if issuer_withheld => {
            "what the cloud must hold for this token, once you know its issuer is yours (see the issuer problem):"
        }
        Some(_) => "what the cloud must hold for this token:",
        None => "what the cloud must hold (placeholders in capitals: the token could not be read):",
    };
    report.item(name, "binding", "info", intro);
    for line in d.binding(claims, audience) {
        report.more(&format!("  {line}"));
    }
}

fn describe_claims(claims: &Claims, now: SystemTime) -> String {
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "<none>".to_owned());
    let mut text = format!("iss={} sub={} aud=[{}]", or_none(&claims.iss), or_none(&claims.sub), claims.aud.join(", "));
    match claims.exp {
        Some(exp) => {
            let _ = write!(text, " exp={}", describe_time(exp, now));
        }
        None => text.push_str(" exp=<none>"),
    }
    text
}

/// `2026-11-22T14:41:07Z (in 59m 58s)` or `(... ago)`, to the second.
fn describe_time(t: SystemTime, now: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_seconds(t);
    let whole = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string();
    match t.duration_since(now) {
        Ok(left) => format!("{stamp} (in {})", whole(left)),
        Err(e) => format!("{stamp} ({} ago)", whole(e.duration())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_throttled_exchange_is_told_apart_from_a_configuration_problem() {
        let with = ExchangeError::throttled("HTTP 429", Some(Duration::from_secs(60)));
        assert_eq!(throttled(&with), ": throttled by the token service, which asks to retry after 1m");
        let without = ExchangeError::throttled("Rate exceeded", None);
        assert_eq!(throttled(&without), ": throttled by the token service");
        assert_eq!(throttled(&ExchangeError::terminal("AccessDenied")), "");
    }
}
