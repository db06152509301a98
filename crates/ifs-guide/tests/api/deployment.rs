//! Every map from requests to functions agrees with the routes the functions declare beside
//! their handlers: `template.yaml` (API Gateway → Lambda functions → binaries), the `cargo lambda
//! watch` router in the workspace's Cargo.toml, and `ifs-guide serve`, which must answer them all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use ifs_api::Route;
use serde_yaml::Value;

use crate::helpers::spawn_app;

/// Binary name → the routes its function declares.
fn declared() -> BTreeMap<&'static str, &'static [Route]> {
    BTreeMap::from([
        ("ifs-signup", ifs_signup::ROUTES),
        ("ifs-login", ifs_login::ROUTES),
        ("ifs-me", ifs_me::ROUTES),
        ("ifs-logout", ifs_logout::ROUTES),
        ("ifs-dialogue", ifs_dialogue::ROUTES),
        ("ifs-dialogues", ifs_dialogues::ROUTES),
        ("ifs-messages", ifs_messages::ROUTES),
        ("agent", ifs_agent::router::ROUTES),
    ])
}

type Endpoints = BTreeSet<(String, String)>;

fn endpoints(routes: &[Route]) -> Endpoints {
    routes.iter().map(|r| (r.method_name().to_owned(), r.path.to_owned())).collect()
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("expected a string, found {value:?}"))
}

/// The template's functions: binary → (its API routes, whether each needs an IAM signature).
fn template_functions() -> BTreeMap<String, BTreeMap<(String, String), bool>> {
    let template: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("template.yaml")).unwrap()).unwrap();
    let mut functions = BTreeMap::new();
    for (name, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let name = text(name);
        let properties = &resource["Properties"];
        let binary = if properties["PackageType"] == "Image" {
            // The image's entry point is the `agent` binary its Dockerfile builds.
            let dockerfile = text(&resource["Metadata"]["Dockerfile"]);
            let source = std::fs::read_to_string(root().join(dockerfile)).unwrap();
            assert!(source.contains("--bin agent"), "{dockerfile} does not build the agent binary");
            // Never for the build machine's CPU (.cargo/config.toml): Lambda's.
            assert!(
                source.contains(r#"ENV RUSTFLAGS="-C target-cpu=x86-64-v3""#),
                "{dockerfile} does not build for x86-64-v3"
            );
            "agent".to_owned()
        } else {
            assert_eq!(resource["Metadata"]["BuildMethod"], "rust-cargolambda", "{name}");
            let binary = text(&resource["Metadata"]["BuildProperties"]["Binary"]).to_owned();
            // The package at CodeUri is the one whose binary this is.
            let manifest = root().join(text(&properties["CodeUri"])).join("Cargo.toml");
            let manifest: toml::Table = std::fs::read_to_string(&manifest).unwrap().parse().unwrap();
            assert_eq!(manifest["package"]["name"].as_str(), Some(binary.as_str()), "{name}: CodeUri");
            binary
        };
        let mut routes = BTreeMap::new();
        for (event, spec) in properties["Events"].as_mapping().into_iter().flatten() {
            assert_eq!(spec["Type"], "Api", "{name}.{}", text(event));
            let api = &spec["Properties"];
            let iam = match &api["Auth"]["Authorizer"] {
                Value::Null => false,
                authorizer => text(authorizer) == "AWS_IAM",
            };
            let endpoint = (text(&api["Method"]).to_uppercase(), text(&api["Path"]).to_owned());
            assert!(routes.insert(endpoint.clone(), iam).is_none(), "{name}: {endpoint:?} twice");
        }
        assert!(functions.insert(binary.clone(), routes).is_none(), "two functions build {binary}");
    }
    functions
}

#[test]
fn the_template_routes_each_declared_route_to_its_own_function() {
    let functions = template_functions();
    let declared = declared();
    assert_eq!(
        functions.keys().map(String::as_str).collect::<Vec<_>>(),
        declared.keys().copied().collect::<Vec<_>>()
    );
    for (binary, routes) in &declared {
        let deployed: Endpoints = functions[*binary].keys().cloned().collect();
        assert_eq!(deployed, endpoints(routes), "{binary}");
        // The agent is no public endpoint: only IAM-signed requests reach it through the API.
        let public: Vec<_> = functions[*binary].iter().filter(|(_, iam)| !**iam).collect();
        if *binary == "agent" {
            assert!(public.is_empty(), "anonymous agent routes: {public:?}");
        } else {
            assert_eq!(public.len(), routes.len(), "{binary} should be public");
        }
    }
}

/// A function that answers as a stream must be invoked as one by every route to it, and only
/// such a function may be: either way round the answer would be garbled.
#[test]
fn functions_that_stream_are_invoked_as_streams_on_every_route() {
    let template: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("template.yaml")).unwrap()).unwrap();
    let mut streaming = Vec::new();
    for (name, resource) in template["Resources"].as_mapping().unwrap() {
        if resource["Type"] != "AWS::Serverless::Function" {
            continue;
        }
        let properties = &resource["Properties"];
        let streams = properties["Environment"]["Variables"]["LAMBDA_STREAMING"] == "true";
        if streams {
            streaming.push(text(name));
        }
        for (event, spec) in properties["Events"].as_mapping().into_iter().flatten() {
            let mode = &spec["Properties"]["ResponseTransferMode"];
            assert_eq!(
                mode == "RESPONSE_STREAM",
                streams,
                "{}: event {} ({mode:?})",
                text(name),
                text(event)
            );
        }
    }
    streaming.sort();
    assert_eq!(streaming, ["AgentFunction", "DialogueFunction", "MeFunction"]);
}

#[test]
fn the_dialogue_route_streams_and_every_timeout_gives_way_to_the_next() {
    let template: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("template.yaml")).unwrap()).unwrap();
    let dialogue = &template["Resources"]["DialogueFunction"]["Properties"];
    let agent = &template["Resources"]["AgentFunction"]["Properties"];
    let event = &dialogue["Events"]["Dialogue"]["Properties"];
    // API Gateway streams the function's answer, and the function answers as a stream.
    assert_eq!(event["ResponseTransferMode"], "RESPONSE_STREAM");
    assert_eq!(dialogue["Environment"]["Variables"]["LAMBDA_STREAMING"], "true");
    let seconds = |value: &Value| value.as_u64().or_else(|| value.as_str()?.parse().ok()).unwrap();
    let integration = seconds(&event["TimeoutInMillis"]) / 1000;
    let function = seconds(&dialogue["Timeout"]);
    let waits_for_agent = seconds(&dialogue["Environment"]["Variables"]["AGENT_TIMEOUT"]);
    let agent_runs = seconds(&agent["Timeout"]);
    // The agent's own limit comes first (its failure is reported), then the dialogue's wait
    // (504 agent_timeout, message kept), then the function's, never API Gateway's before those.
    assert!(agent_runs < waits_for_agent, "agent {agent_runs} s, AGENT_TIMEOUT {waits_for_agent} s");
    assert!(waits_for_agent < function, "AGENT_TIMEOUT {waits_for_agent} s, function {function} s");
    assert!(function <= integration, "function {function} s, integration {integration} s");
    assert!(integration > 29, "a streamed route may outlast API Gateway's 29 s");
    // The agent answers as a stream (the dialogue function reads it with
    // InvokeWithResponseStream), so every route to it must take a stream.
    assert_eq!(agent["Environment"]["Variables"]["LAMBDA_STREAMING"], "true");
    assert_eq!(dialogue["Environment"]["Variables"]["AGENT_FUNCTION_STREAMING"], "true");
    for (name, event) in agent["Events"].as_mapping().unwrap() {
        assert_eq!(event["Properties"]["ResponseTransferMode"], "RESPONSE_STREAM", "{}", text(name));
    }
}

#[test]
fn cargo_lambda_watch_routes_each_declared_route_to_its_own_binary() {
    let manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml")).unwrap().parse().unwrap();
    let router = manifest["workspace"]["metadata"]["lambda"]["watch"]["router"].as_table().unwrap();
    let mut watched: BTreeMap<String, Endpoints> = BTreeMap::new();
    for (path, methods) in router {
        for entry in methods.as_array().unwrap() {
            let function = entry["function"].as_str().unwrap().to_owned();
            let method = entry["method"].as_str().unwrap().to_owned();
            watched.entry(function).or_default().insert((method, path.clone()));
        }
    }
    let declared: BTreeMap<String, Endpoints> =
        declared().into_iter().map(|(binary, routes)| (binary.to_owned(), endpoints(routes))).collect();
    assert_eq!(watched, declared);
}

/// `ifs-guide serve` mounts every function: each declared route is there, with its method.
#[tokio::test]
async fn serve_answers_every_declared_route() {
    let app = spawn_app().await;
    for (binary, routes) in declared() {
        if binary == "agent" {
            // The agent's routes are mounted only with the in-process model (tests/api/model.rs).
            continue;
        }
        for route in routes {
            // A path parameter gets a well-formed id; without a token the answer is 401 anyway.
            let path = route
                .path
                .replace("{dialogue_id}", &ifs_domain::DialogueId::generate().to_string())
                .replace("{message_id}", &ifs_domain::MessageId::generate().to_string());
            let method = reqwest::Method::from_bytes(route.method_name().as_bytes()).unwrap();
            let request = match route.method_name() {
                "GET" => app.client.get(app.url(&path)),
                _ => app.client.request(method, app.url(&path)).json(&serde_json::json!({})),
            };
            let status = request.send().await.unwrap().status().as_u16();
            assert!(
                ![StatusCode::NOT_FOUND.as_u16(), StatusCode::METHOD_NOT_ALLOWED.as_u16()].contains(&status),
                "{binary}: {} {} answered {status}",
                route.method_name(),
                route.path
            );
        }
    }
}

/// The template's resource `name`, parsed.
fn resource(name: &str) -> Value {
    let template: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("template.yaml")).unwrap()).unwrap();
    template["Resources"][name].clone()
}

/// A string that may be an intrinsic (`!Sub "…"`): its text either way.
fn plain(value: &Value) -> String {
    match value {
        Value::Tagged(tagged) => text(&tagged.value).to_owned(),
        other => text(other).to_owned(),
    }
}

/// The chat page's bucket is private: every public access is blocked, and the only reader its
/// policy allows is CloudFront on behalf of this stack's distribution (origin access control).
#[test]
fn the_page_bucket_is_private_and_read_only_by_its_distribution() {
    let bucket = resource("WebBucket");
    assert_eq!(bucket["Type"], "AWS::S3::Bucket");
    let block = &bucket["Properties"]["PublicAccessBlockConfiguration"];
    for setting in ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"] {
        assert_eq!(block[setting], Value::Bool(true), "{setting}");
    }
    for public in ["WebsiteConfiguration", "AccessControl"] {
        assert!(bucket["Properties"].get(public).is_none(), "the bucket has {public}");
    }

    let policy = resource("WebBucketPolicy");
    let statements = policy["Properties"]["PolicyDocument"]["Statement"].as_sequence().unwrap();
    let allows: Vec<_> = statements.iter().filter(|s| s["Effect"] == "Allow").collect();
    assert_eq!(allows.len(), 1, "one reader");
    let allow = allows[0];
    assert_eq!(allow["Principal"]["Service"], "cloudfront.amazonaws.com");
    assert_eq!(allow["Action"], "s3:GetObject");
    let source = plain(&allow["Condition"]["StringEquals"]["AWS:SourceArn"]);
    assert!(source.ends_with(":distribution/${WebDistribution}"), "{source}");

    let distribution = resource("WebDistribution");
    let config = &distribution["Properties"]["DistributionConfig"];
    let origins = config["Origins"].as_sequence().unwrap();
    let page = origins.iter().find(|o| o["Id"] == "page").unwrap();
    assert!(page.get("OriginAccessControlId").is_some(), "the page origin signs with OAC");
    assert_eq!(page["S3OriginConfig"]["OriginAccessIdentity"], "", "no legacy OAI");
    assert_eq!(config["DefaultCacheBehavior"]["TargetOriginId"], "page");
    assert_eq!(config["DefaultCacheBehavior"]["ViewerProtocolPolicy"], "redirect-to-https");
    assert_eq!(config["DefaultRootObject"], "index.html");
}

/// `/api/*` reaches the REST API's stage, uncached, with the token forwarded: the page and the
/// API share an origin.
#[test]
fn the_api_shares_the_page_s_origin_uncached() {
    let config = resource("WebDistribution")["Properties"]["DistributionConfig"].clone();
    let api = config["Origins"].as_sequence().unwrap().iter().find(|o| o["Id"] == "api").unwrap().clone();
    assert_eq!(plain(&api["DomainName"]), "${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}");
    assert_eq!(plain(&api["OriginPath"]), "/${StageName}");
    let behavior = config["CacheBehaviors"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|b| b["PathPattern"] == "/api/*")
        .unwrap()
        .clone();
    assert_eq!(behavior["TargetOriginId"], "api");
    let methods: Vec<_> = behavior["AllowedMethods"].as_sequence().unwrap().iter().map(text).collect();
    for method in ["GET", "POST", "PATCH", "DELETE"] {
        assert!(methods.contains(&method), "{method}");
    }
    let cache = resource("WebApiCachePolicy")["Properties"]["CachePolicyConfig"].clone();
    assert_eq!(cache["DefaultTTL"], Value::from(0));
    assert_eq!(
        cache["ParametersInCacheKeyAndForwardedToOrigin"]["HeadersConfig"]["Headers"][0],
        "Authorization"
    );
}

/// CloudFront's response headers policy adds exactly the headers `ifs-guide serve` sends with
/// the page, with the same values: the CSP the page was tested under is the one deployed.
#[tokio::test]
async fn cloudfront_sends_the_page_headers_ifs_guide_serve_sends() {
    let policy = resource("WebHeaders")["Properties"]["ResponseHeadersPolicyConfig"].clone();
    let security = &policy["SecurityHeadersConfig"];
    let mut deployed = BTreeMap::from([
        (
            "content-security-policy".to_owned(),
            text(&security["ContentSecurityPolicy"]["ContentSecurityPolicy"]).to_owned(),
        ),
        ("x-frame-options".to_owned(), text(&security["FrameOptions"]["FrameOption"]).to_owned()),
        ("referrer-policy".to_owned(), text(&security["ReferrerPolicy"]["ReferrerPolicy"]).to_owned()),
    ]);
    if security.get("ContentTypeOptions").is_some() {
        deployed.insert("x-content-type-options".to_owned(), "nosniff".to_owned());
    }
    let hsts = &security["StrictTransportSecurity"];
    let mut hsts_value = format!("max-age={}", hsts["AccessControlMaxAgeSec"].as_u64().unwrap());
    if hsts["IncludeSubdomains"] == Value::Bool(true) {
        hsts_value.push_str("; includeSubDomains");
    }
    if hsts["Preload"] == Value::Bool(true) {
        hsts_value.push_str("; preload");
    }
    deployed.insert("strict-transport-security".to_owned(), hsts_value);
    for item in policy["CustomHeadersConfig"]["Items"].as_sequence().unwrap() {
        deployed.insert(text(&item["Header"]).to_ascii_lowercase(), text(&item["Value"]).to_owned());
    }
    for overridden in [
        "ContentSecurityPolicy",
        "ContentTypeOptions",
        "FrameOptions",
        "ReferrerPolicy",
        "StrictTransportSecurity",
    ] {
        assert_eq!(security[overridden]["Override"], Value::Bool(true), "{overridden} must replace S3's");
    }

    let app = spawn_app().await;
    let response = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let served: BTreeMap<String, String> = ifs_guide::web::SECURITY_HEADERS
        .iter()
        .map(|(name, _)| {
            let value = response.headers().get(*name).unwrap_or_else(|| panic!("serve sends no {name}"));
            ((*name).to_owned(), value.to_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(deployed, served);
}
