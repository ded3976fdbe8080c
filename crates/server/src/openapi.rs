//! The error answers of the OpenAPI document. Every operation declares each error
//! status it can answer, as `application/problem+json` with the stable codes of that
//! status, so a client generated from the document (or a fuzzer that checks answers
//! against it) finds nothing undocumented. The statuses follow from what the route is
//! (authenticated, names a resource in its path, takes a body, changes state, queues
//! work), through the same layers every route goes through, so a route added later is
//! documented by the same rules. [`check_answer`] is what the API tests hold every
//! answer to.

use commcredits_core::ErrorCode;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

/// The media type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// What an error status means to a client, before the list of its codes.
fn meaning(status: u16) -> &'static str {
    match status {
        400 => "The body is not well-formed JSON.",
        401 => "No API key, or one that is unknown or revoked.",
        402 => "The payment failed; the order is recorded as failed.",
        403 => "The key's role may not do this.",
        404 => "No such resource for this key (another organization's resources answer the same).",
        409 => "A conflict with the current state or with an earlier request of the same Idempotency-Key.",
        413 => "The body is larger than this route accepts.",
        415 => "The body is not of a media type this route accepts.",
        422 => "The request is well-formed but a value is invalid or not allowed.",
        429 => "Too many requests of this kind; retry after the Retry-After header's seconds.",
        500 => "An internal error; the request was not applied or its outcome is unknown.",
        503 => "The server is at a limit (open connections, the time to answer, queued calls, concurrent reports); retry after the Retry-After header's seconds.",
        _ => "An error.",
    }
}

/// The stable codes answered with `status`, from the one table in `core`.
fn codes(status: u16) -> Vec<&'static str> {
    ErrorCode::ALL.iter().filter(|c| c.http_status() == status).map(|c| c.as_str()).collect()
}

fn has_path_params(path: &str) -> bool {
    path.contains('{')
}

/// The error statuses an operation can answer.
pub fn error_statuses(method: &str, path: &str, op: &Operation) -> Vec<u16> {
    let mut s = vec![500];
    let secured = op.security.as_ref().is_some_and(|v| !v.is_empty());
    if secured {
        // The key check, the role check and the limit on failed authentications.
        s.extend([401, 403, 429]);
    }
    let tags = op.tags.clone().unwrap_or_default();
    let calls = tags.iter().any(|t| t == "calls");
    // A resource named in the path, or (call control) an organization named in the body.
    if has_path_params(path) || calls {
        s.push(404);
    }
    let mutating = matches!(method, "post" | "put" | "patch" | "delete");
    if mutating {
        // Bodies are read (a stalled body is answered 422) and parsed; the
        // Idempotency-Key header may conflict.
        s.extend([400, 409, 413, 415, 422]);
    } else if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
        // Query and path values are parsed and checked.
        s.push(422);
    }
    let op_id = op.operation_id.as_deref().unwrap_or_default();
    // A card is checked with the gateway when it is added and charged when funds are.
    if matches!(op_id, "add_funds" | "add_payment_method") {
        s.push(402);
    }
    // Any request may meet a limit of the server: the open connections, the time to
    // answer, and per route the call writer's queue or the report slots.
    s.push(503);
    s.sort_unstable();
    s.dedup();
    s
}

fn problem_response(status: u16) -> utoipa::openapi::Response {
    let list = codes(status).iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
    ResponseBuilder::new()
        .description(format!("{} Codes: {list}.", meaning(status)))
        .content(PROBLEM_JSON, ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build())
        .build()
}

fn operations(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    let mut v = Vec::new();
    for (m, op) in [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("patch", &mut item.patch),
        ("head", &mut item.head),
        ("options", &mut item.options),
        ("trace", &mut item.trace),
    ] {
        if let Some(op) = op.as_mut() {
            v.push((m, op));
        }
    }
    v
}

/// Replaces each operation's catch-all error answers by one response per status it
/// can answer.
pub fn document_errors(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in operations(item) {
            op.responses.responses.retain(|status, _| !status.ends_with("XX") && status != "default");
            for status in error_statuses(method, path, op) {
                op.responses.responses.insert(status.to_string(), RefOr::T(problem_response(status)));
            }
        }
    }
}

/// Checks one answer against the document: the route and method are in it, the
/// status is declared for them, and the content type is one declared for that status.
pub fn check_answer(doc: &OpenApi, method: &str, route: &str, status: u16, content_type: &str) -> Result<(), String> {
    let item = doc.paths.paths.get(route).ok_or_else(|| format!("{route} is not in the OpenAPI document"))?;
    let method = method.to_ascii_lowercase();
    let op = match method.as_str() {
        "get" => item.get.as_ref(),
        "put" => item.put.as_ref(),
        "post" => item.post.as_ref(),
        "delete" => item.delete.as_ref(),
        "patch" => item.patch.as_ref(),
        _ => None,
    };
    let Some(op) = op else {
        // A method the route does not take: the router answers 405 as a problem.
        let media = content_type.split(';').next().unwrap_or_default().trim();
        return if status == 405 && media == PROBLEM_JSON {
            Ok(())
        } else {
            Err(format!("{method} {route} is not in the OpenAPI document and answered {status} ({media}), not 405"))
        };
    };
    let response = op.responses.responses.get(&status.to_string()).ok_or_else(|| {
        let declared: Vec<&String> = op.responses.responses.keys().collect();
        format!("{method} {route} answered {status}, which the document does not declare (it declares {declared:?})")
    })?;
    let RefOr::T(response) = response else {
        return Ok(());
    };
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if response.content.is_empty() {
        return Ok(());
    }
    if response.content.keys().any(|k| k == media) {
        Ok(())
    } else {
        let declared: Vec<&String> = response.content.keys().collect();
        Err(format!("{method} {route} answered {status} as '{media}', but the document declares {declared:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_declares_its_errors_as_problems_with_their_codes() {
        let (_, mut doc) = crate::api();
        let mut n = 0;
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations(item) {
                n += 1;
                let keys: Vec<String> = op.responses.responses.keys().cloned().collect();
                assert!(keys.iter().all(|k| k.parse::<u16>().is_ok()), "{method} {path} keeps a range: {keys:?}");
                for status in error_statuses(method, path, op) {
                    let Some(RefOr::T(r)) = op.responses.responses.get(&status.to_string()) else {
                        panic!("{method} {path} does not declare {status}");
                    };
                    assert!(r.content.contains_key(PROBLEM_JSON), "{method} {path} {status}");
                    for code in codes(status) {
                        assert!(r.description.contains(&format!("`{code}`")), "{method} {path} {status} lacks {code}");
                    }
                }
                assert!(keys.iter().any(|k| k.starts_with('2')), "{method} {path} has no success answer");
            }
        }
        assert!(n >= 38, "only {n} operations");
    }

    #[test]
    fn parameters_are_where_the_route_reads_them() {
        use utoipa::openapi::path::ParameterIn;
        let (_, mut doc) = crate::api();
        let mut queries = 0;
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations(item) {
                for p in op.parameters.iter().flatten() {
                    let RefOr::T(p) = p else { continue };
                    let in_template = path.contains(&format!("{{{}}}", p.name));
                    match p.parameter_in {
                        ParameterIn::Path => assert!(in_template, "{method} {path}: '{}' is no path segment", p.name),
                        ParameterIn::Query => {
                            queries += 1;
                            assert!(!in_template, "{method} {path}: '{}' is a path segment", p.name)
                        }
                        _ => {}
                    }
                }
            }
        }
        assert!(queries > 10, "only {queries} query parameters");
    }

    #[test]
    fn call_control_declares_what_its_queue_and_lookups_answer() {
        let (_, doc) = crate::api();
        for status in [400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503] {
            check_answer(&doc, "POST", "/v1/calls/authorize", status, PROBLEM_JSON).unwrap();
        }
        check_answer(&doc, "POST", "/v1/calls/authorize", 200, "application/json").unwrap();
        // Undeclared answers are caught: a status, a media type, a method, a route.
        assert!(check_answer(&doc, "POST", "/v1/calls/authorize", 402, PROBLEM_JSON).is_err());
        assert!(check_answer(&doc, "POST", "/v1/calls/authorize", 200, "text/html").is_err());
        assert!(check_answer(&doc, "GET", "/v1/calls/authorize", 200, "application/json").is_err());
        check_answer(&doc, "GET", "/v1/calls/authorize", 405, PROBLEM_JSON).unwrap();
        assert!(check_answer(&doc, "GET", "/v1/nowhere", 200, "application/json").is_err());
        check_answer(&doc, "GET", "/v1/orgs/{org}/reports/pstn-usage", 200, "text/csv; charset=utf-8").unwrap();
        check_answer(&doc, "GET", "/v1/orgs/{org}/credits", 404, PROBLEM_JSON).unwrap();
        assert!(check_answer(&doc, "GET", "/v1/orgs/{org}/credits", 404, "application/json").is_err());
    }
}
