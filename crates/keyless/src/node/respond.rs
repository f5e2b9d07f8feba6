//! The node's credential listeners' request path: who is asking (the pod at the source address),
//! that pod's ServiceAccount's providers, and for the AWS container endpoint the pod's own token
//! checked and swapped for the providers' authorization value. Everything else is the sidecar's
//! request path (keyless-provider's `Routes`: the same native endpoints, rules and error shapes).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderValue, header};
use axum::response::Response;
use keyless_provider::{BoxFuture, CallerRefusal, Routes, Violation};
use tracing::{debug, warn};

use super::authz::PodTokens;
use super::pods::NodePods;
use super::served::Registry;
use keyless_provider::listener::{RequestBody, Respond};

/// What every node credential listener answers with.
#[derive(Clone)]
pub struct NodeService {
    pub pods: NodePods,
    pub registry: Arc<Registry>,
    pub tokens: Arc<PodTokens>,
    /// Every provider's routes with their rules and no identity: the native shape of a refusal
    /// before any ServiceAccount's providers are chosen.
    pub refusals: Routes,
    /// Set once a refusal was logged as a warning; later ones go to debug (a pod cannot flood the log).
    pub refusal_logged: Arc<AtomicBool>,
}

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeService")
    }
}

type Request = axum::http::Request<RequestBody>;

impl NodeService {
    async fn refuse_caller(&self, request: Request, refusal: CallerRefusal, peer: IpAddr, why: &str) -> Response {
        if self.refusal_logged.swap(true, Ordering::Relaxed) {
            debug!(%peer, refusal = refusal.code(), why, "refused a caller");
        } else {
            warn!(%peer, refusal = refusal.code(), why, "refused a caller (further refusals are logged at debug level)");
        }
        let answer = self.refusals.refuse(request, &Violation::Caller(refusal));
        answer.await.unwrap_or_else(|never: Infallible| match never {})
    }

    async fn answer(self, mut request: Request, peer: IpAddr) -> Response {
        let caller = match self.pods.caller(peer) {
            Ok(caller) => caller,
            Err(refusal) => return self.refuse_caller(request, refusal, peer, "source address").await,
        };
        let served = match self.registry.served_for(&caller).await {
            Ok(served) => served,
            Err(refusal) => return self.refuse_caller(request, refusal, peer, "ServiceAccount").await,
        };
        // One Authorization header is the pod's token; two are left for the rules to refuse.
        let given: Vec<&HeaderValue> = request.headers().get_all(header::AUTHORIZATION).iter().collect();
        if let [given] = given.as_slice() {
            let verified = match given.to_str() {
                Ok(token) => self.tokens.verify(token.trim(), &caller).await,
                Err(_) => Err("not text".to_owned()),
            };
            let swapped = match (&verified, &served.aws_authorization) {
                (Ok(()), Some(own)) => HeaderValue::from_str(own.expose()).ok(),
                _ => None,
            };
            match (verified, swapped) {
                (Ok(()), Some(value)) => {
                    request.headers_mut().insert(header::AUTHORIZATION, value);
                }
                (Ok(()), None) => {
                    // No AWS identity: no route of the set reads it.
                    request.headers_mut().remove(header::AUTHORIZATION);
                }
                (Err(why), _) => {
                    let why = format!("authorization token: {why}");
                    return self.refuse_caller(request, CallerRefusal::BadAuthorization, peer, &why).await;
                }
            }
        }
        served.routes.serve(request).await.unwrap_or_else(|never: Infallible| match never {})
    }
}

impl Respond for NodeService {
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn respond(&self, request: Request, peer: SocketAddr) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.answer(request, peer.ip().to_canonical()).await) })
    }

    fn refuse(&self, request: Request, violation: &Violation) -> Self::Future {
        Box::pin(self.refusals.refuse(request, violation))
    }
}
