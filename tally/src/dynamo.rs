//! DynamoDB client construction: a local endpoint (moto in tests and the demo) when one is
//! configured, real DynamoDB through the standard AWS credential and region chain otherwise.

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};

pub async fn client(endpoint: Option<&str>) -> Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(endpoint) = endpoint {
        // A local endpoint checks that a request is signed, not by whom; fixed credentials keep
        // local runs independent of whatever AWS profile the machine has.
        loader = loader
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "local",
                "local",
                None,
                None,
                "votes-local",
            ));
    }
    Client::new(&loader.load().await)
}
