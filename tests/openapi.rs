//! PROTOCOL.md "HTTP": `GET /v1/openapi.json` is an OpenAPI 3.1 document describing every HTTP endpoint.
//! Checked against the route table the server is built from, both ways, and against real answers.

mod common;

use common::*;
use serde_json::{json, Value};

async fn document(node: &TestNode) -> Value {
    let (status, body) = http_get(&node.url("/v1/openapi.json")).await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("the document is JSON")
}

#[tokio::test]
async fn every_served_route_is_in_the_document_and_nothing_else() {
    let node = TestNode::start();
    let doc = document(&node).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Rookery");
    let served = rookery::net::server::SERVED;
    assert!(served.len() >= 27, "the route table");
    for (method, path) in served {
        let op = &doc["paths"][path][method];
        assert!(
            op.is_object(),
            "{method} {path} is served but not documented"
        );
        assert!(
            op["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            if method == "parameters" {
                continue;
            }
            assert!(
                served.contains(&(method.as_str(), path.as_str())),
                "{method} {path} is documented but not served"
            );
        }
    }
    // every route is really answered by this node (not a 404 from the router)
    for (method, path) in served {
        let concrete = path
            .replace("{conv}", "g:none")
            .replace("{user}", "nobody")
            .replace("{upload}", "0123456789abcdef0123456789abcdef")
            .replace("{index}", "0")
            .replace("{id}", "0123456789abcdef0123456789abcdef");
        let method = method.to_uppercase();
        let (status, body) = http(&method, &node.url(&concrete), None, None).await;
        let unrouted = status == 404 && body.is_empty();
        assert!(!unrouted, "{method} {concrete}: {status} {body:?}");
    }
}

#[tokio::test]
async fn the_documented_types_match_real_answers() {
    let node = TestNode::start();
    let doc = document(&node).await;
    let schemas = &doc["components"]["schemas"];
    let fields = |name: &str| -> Vec<String> {
        let mut keys: Vec<String> = schemas[name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name}: {}", schemas[name]))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    let post = json!({"conv":"dm:a:b","from":"a","cid":"x","body":{"text":"hi"}});
    let (status, posted) = api("POST", &node.url("/v1/messages"), Some(post)).await;
    assert_eq!(status, 200);
    let mut keys: Vec<String> = posted
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(keys, fields("PostedResponse"));
    let (_, error) = api("GET", &node.url("/v1/groups/g:none"), None).await;
    let mut keys: Vec<String> = error.as_object().expect("object").keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, fields("ErrorBody"));
    let codes: Vec<&str> = schemas["ErrorCode"]["enum"]
        .as_array()
        .expect("error codes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(codes.len(), 11, "the closed set of error codes: {codes:?}");
    assert!(codes.contains(&"not_friends"));
    let admin = &doc["paths"]["/v1/messages"]["post"]["security"];
    assert_eq!(admin, &json!([{"admin_key": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_key"]["scheme"],
        "bearer"
    );
}
