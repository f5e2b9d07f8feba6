//! The `Host` rule (DNS-rebinding protection, `keyless_provider::guard::host_allowed`) against an
//! oracle written independently (`keyless_fuzz::names_keyless`): the two must agree on every input,
//! so the rule neither lets a foreign name through nor refuses an address a client dials. The
//! whole request rule set (`Rules::check`) must not panic on the same bytes as a Host header, an
//! absolute-form authority or a duplicated security header.
#![no_main]

use axum::body::Body;
use axum::http::{HeaderValue, Request};
use keyless_provider::Rules;
use keyless_provider::guard::{PlainText, host_allowed};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &["metadata.google.internal", "metadata"];

fuzz_target!(|data: &[u8]| {
    assert_eq!(
        host_allowed(data, NAMES),
        keyless_fuzz::names_keyless(data, NAMES),
        "the Host rule and its oracle disagree on {:?}",
        String::from_utf8_lossy(data)
    );
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut builder = Request::builder().uri("/x").header("host", value.clone()).header("authorization", value.clone());
    if data.len() % 2 == 0 {
        builder = builder.header("authorization", value);
    }
    if let Ok(request) = builder.body(Body::empty()) {
        let _ = Rules::credentials(PlainText).check(&request);
        let _ = Rules::admin().check(&request);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(request) = Request::builder().uri(format!("http://{text}/x")).body(Body::empty())
    {
        let _ = Rules::admin().check(&request);
    }
});
