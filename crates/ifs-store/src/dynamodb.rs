//! The DynamoDB adapter: users and dialogues in one table (`TABLE_NAME`), one item per message,
//! the head message carrying the dialogue's summary and the keys of one sparse index that lists
//! an owner's dialogues by last activity. Every operation costs a constant number of calls,
//! whatever a dialogue's length (`docs/data-model.md` has the layout and the counts). Key
//! layouts are private to this module.

use std::collections::{BTreeSet, HashMap};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Credentials, Intercept, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, DeleteRequest, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, Projection, ProjectionType, Put, ReturnValue, ScalarAttributeType,
    TransactWriteItem, Update, WriteRequest,
};
use ifs_domain::{
    AuditReport, DialogueCursor, DialogueId, DialogueSummary, Email, FORK_MAX_MESSAGES, Fork, ForkOrigin,
    Limit, Message, MessageCursor, MessageId, NewMessage, Page, PageFill, RegenerateRefusal, ReplyMeta,
    ReplyVersion, Role, StoredDialogue, StoredLink, Timestamp, UserId,
};

use crate::{
    Audit, DialogueStore, SafetyCount, SafetyCounts, StoreError, StoreResult, UserRecord, UserStore,
};

/// The index of heads by owner and last activity, newest first.
const BY_ACTIVITY: &str = "by_owner_activity";
/// Attempts at an append that keeps losing races to other appends on the same dialogue.
const APPEND_ATTEMPTS: u32 = 64;
/// Longest wait between two attempts.
const BACKOFF_CAP: Duration = Duration::from_millis(50);
/// The attribute that marks a head whose dialogue is being deleted (the instant it began, ms):
/// such a dialogue answers not found to every read and write, and is no longer listed.
const DELETING: &str = "deleting";
/// The attribute that marks the head of a fork being written (a token only that fork knows):
/// like [`DELETING`], it hides the dialogue; a deletion removes it, so that the fork's writes
/// that follow fail instead of leaving orphans.
const FORKING: &str = "forking";
/// Copies one transaction of a fork writes: DynamoDB's 100 actions, less the check of the head.
const FORK_BATCH: usize = 99;
/// Keys a BatchWriteItem deletes at most (DynamoDB's limit).
const BATCH_WRITE: usize = 25;
/// Keys one query of a deletion reads: four batches, written concurrently.
const DELETE_PAGE: i32 = 100;
/// Attempts at one batch whose items DynamoDB keeps leaving unprocessed (throttling).
const BATCH_ATTEMPTS: u32 = 16;
/// Dialogues hidden, then purged, at once when deleting all of an owner's.
const DELETE_PARALLEL: usize = 8;

type Item = HashMap<String, AttributeValue>;

/// The partition of the safety counters (one item per day × level × screener: a few a day).
const SAFETY_PK: &str = "SAFETY";

fn user_pk(id: UserId) -> String {
    format!("USER#{id}")
}

fn email_pk(email: &Email) -> String {
    format!("EMAIL#{email}")
}

fn dialogue_pk(id: DialogueId) -> String {
    format!("DLG#{id}")
}

/// Where a dialogue's earlier reply versions are kept: a partition of their own, so that reading
/// messages never meets them.
fn versions_pk(id: DialogueId) -> String {
    format!("VER#{id}")
}

/// A version's sort key: the message's position, then the version, both zero-padded.
fn version_sk(seq: u64, version: u32) -> String {
    format!("{seq:020}#{version:010}")
}

/// Zero-padded so that the sort key orders as the number does: a `Query` returns list order.
fn message_sk(seq: u64) -> String {
    format!("MSG#{seq:020}")
}

fn owner_pk(owner: UserId) -> String {
    format!("OWNER#{owner}")
}

/// Where the index files an owner's dialogues whose deletion has begun: out of their listing,
/// still found by the next deletion of theirs, which finishes them.
fn deleting_pk(owner: UserId) -> String {
    format!("DELETING#{owner}")
}

fn activity_sk(updated_at_ms: i64, id: DialogueId) -> String {
    format!("{:020}#{id}", updated_at_ms.max(0))
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn key(pk: String, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn text<'a>(item: &'a Item, name: &str) -> anyhow::Result<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Ok(value),
        _ => anyhow::bail!("item attribute {name} is missing or not a string"),
    }
}

fn optional_text<'a>(item: &'a Item, name: &str) -> anyhow::Result<Option<&'a str>> {
    item.get(name).map(|_| text(item, name)).transpose()
}

fn number<T: std::str::FromStr>(item: &Item, name: &str) -> anyhow::Result<T> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => {
            value.parse().ok().with_context(|| format!("attribute {name}: {value}"))
        }
        _ => anyhow::bail!("item attribute {name} is missing or not a number"),
    }
}

fn instant(item: &Item, name: &str) -> anyhow::Result<Timestamp> {
    chrono::DateTime::from_timestamp_millis(number(item, name)?).with_context(|| format!("attribute {name}"))
}

fn id<T>(item: &Item, name: &str, parse: fn(&str) -> Result<T, ifs_domain::IdError>) -> anyhow::Result<T> {
    parse(text(item, name)?).map_err(|_| anyhow::anyhow!("attribute {name} is not an id"))
}

fn user_item(pk: String, sk: &str, user: &UserRecord) -> Item {
    let mut item = key(pk, sk);
    item.insert("id".into(), s(user.id.to_string()));
    item.insert("email".into(), s(user.email.as_str()));
    item.insert("password_hash".into(), s(&user.password_hash));
    item.insert("created_at".into(), n(user.created_at.timestamp_millis()));
    if let Some(country) = &user.country {
        item.insert("country".into(), s(country.as_str()));
    }
    item
}

fn user_from(item: &Item) -> anyhow::Result<UserRecord> {
    Ok(UserRecord {
        id: id(item, "id", UserId::parse)?,
        email: Email::parse(text(item, "email")?).context("a stored email")?,
        password_hash: text(item, "password_hash")?.to_owned(),
        created_at: instant(item, "created_at")?,
        country: optional_text(item, "country")?
            .map(ifs_domain::Country::parse)
            .transpose()
            .context("a stored country")?,
    })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// A message's item; every message carries its owner, so that reading any page of a dialogue
/// also answers whether the caller may see it.
fn message_item(owner: UserId, message: &Message) -> anyhow::Result<Item> {
    let mut item = key(dialogue_pk(message.dialogue_id), message_sk(message.seq));
    item.insert("owner".into(), s(owner.to_string()));
    item.insert("id".into(), s(message.id.to_string()));
    item.insert("seq".into(), n(message.seq));
    item.insert("role".into(), s(role_name(message.role)));
    item.insert("content".into(), s(&message.content));
    item.insert("created_at".into(), n(message.created_at.timestamp_millis()));
    if let Some(prev) = message.prev_id {
        item.insert("prev_id".into(), s(prev.to_string()));
    }
    if let Some(next) = message.next_id {
        item.insert("next_id".into(), s(next.to_string()));
    }
    if let Some(meta) = &message.meta {
        item.insert("meta".into(), s(serde_json::to_string(meta).context("encoding reply metadata")?));
    }
    Ok(item)
}

/// The head's item: its message, the summary, and the sparse index's keys.
fn head_item(summary: &DialogueSummary, head: &Message) -> anyhow::Result<Item> {
    let mut item = message_item(summary.owner, head)?;
    item.insert("title".into(), s(&summary.title));
    item.insert("updated_at".into(), n(summary.updated_at.timestamp_millis()));
    item.insert("message_count".into(), n(summary.message_count));
    item.insert("tail_id".into(), s(summary.tail_id.to_string()));
    item.insert("gsi1pk".into(), s(owner_pk(summary.owner)));
    item.insert("gsi1sk".into(), s(activity_sk(summary.updated_at.timestamp_millis(), summary.id)));
    if let Some(origin) = summary.forked_from {
        item.insert("forked_from_dialogue".into(), s(origin.dialogue_id.to_string()));
        item.insert("forked_from_message".into(), s(origin.message_id.to_string()));
    }
    Ok(item)
}

fn message_from(item: &Item) -> anyhow::Result<Message> {
    let parse_message_id = |name: &str| -> anyhow::Result<Option<MessageId>> {
        optional_text(item, name)?
            .map(|raw| MessageId::parse(raw).map_err(|_| anyhow::anyhow!("attribute {name} is not an id")))
            .transpose()
    };
    let role = match text(item, "role")? {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => anyhow::bail!("unknown role {other}"),
    };
    let meta: Option<ReplyMeta> = optional_text(item, "meta")?
        .map(serde_json::from_str)
        .transpose()
        .context("decoding reply metadata")?;
    let message_id = id(item, "id", MessageId::parse)?;
    Ok(Message {
        id: message_id,
        dialogue_id: dialogue_of(item)?,
        seq: number(item, "seq")?,
        role,
        content: text(item, "content")?.to_owned(),
        created_at: instant(item, "created_at")?,
        prev_id: parse_message_id("prev_id")?,
        next_id: parse_message_id("next_id")?,
        meta,
    })
}

/// The dialogue a message item is filed under.
fn dialogue_of(item: &Item) -> anyhow::Result<DialogueId> {
    text(item, "pk")?
        .strip_prefix("DLG#")
        .and_then(|raw| DialogueId::parse(raw).ok())
        .context("a message's partition key")
}

fn summary_from(item: &Item) -> anyhow::Result<DialogueSummary> {
    Ok(DialogueSummary {
        id: dialogue_of(item)?,
        owner: id(item, "owner", UserId::parse)?,
        title: text(item, "title")?.to_owned(),
        created_at: instant(item, "created_at")?,
        updated_at: instant(item, "updated_at")?,
        message_count: number(item, "message_count")?,
        tail_id: id(item, "tail_id", MessageId::parse)?,
        forked_from: match (
            optional_text(item, "forked_from_dialogue")?,
            optional_text(item, "forked_from_message")?,
        ) {
            (Some(_), Some(_)) => Some(ForkOrigin {
                dialogue_id: id(item, "forked_from_dialogue", DialogueId::parse)?,
                message_id: id(item, "forked_from_message", MessageId::parse)?,
            }),
            _ => None,
        },
    })
}

/// Whether `owner` may see the message `item`: theirs, and not in a dialogue being deleted or
/// forked (only a head carries the marks).
fn owned_by(item: &Item, owner: UserId) -> bool {
    text(item, "owner").is_ok_and(|stored| stored == owner.to_string())
        && !item.contains_key(DELETING)
        && !item.contains_key(FORKING)
}

/// Maps an SDK failure: what cannot be reached or is throttled is worth retrying shortly
/// ([`StoreError::Unavailable`]); the rest is unexpected.
fn failure<E, R>(what: &str, error: &SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let cause = anyhow::anyhow!("DynamoDB: {what}: {}", DisplayErrorContext(error));
    let transient = match error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => matches!(
            service.err().code(),
            Some(
                "ThrottlingException"
                    | "ProvisionedThroughputExceededException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "ServiceUnavailable"
            )
        ),
        _ => false,
    };
    if transient { StoreError::Unavailable(cause) } else { StoreError::Unexpected(cause) }
}

/// Maps the failure of a conditional write on an item the caller must own: its condition
/// refusing means the item is not there for them ([`StoreError::NotFound`]); the rest as
/// [`failure`] does.
fn unless_refused<E, R>(what: &str, error: &SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error.as_service_error().and_then(ProvideErrorMetadata::code) {
        Some("ConditionalCheckFailedException") => StoreError::NotFound,
        _ => failure(what, error),
    }
}

/// Counts every call this store makes, for tests that hold it to a constant number.
#[derive(Debug)]
struct CountCalls(Arc<AtomicU64>);

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "CountCalls"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The AWS SDK configuration every client of ours starts from: through `endpoint` when given (a
/// local emulator: DynamoDB Local, a Lambda or SSM stand-in), with fixed local credentials and
/// region unless the environment names its own (emulators accept any); otherwise the default
/// AWS credential and region chain.
#[must_use]
pub fn sdk_loader(endpoint: Option<&str>) -> aws_config::ConfigLoader {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(Credentials::new("local", "local", None, None, "ifs-guide"));
        }
        if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            loader = loader.region(Region::new("us-east-1"));
        }
    }
    loader
}

/// Users and dialogues in one DynamoDB table.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    calls: Arc<AtomicU64>,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore").field("table", &self.table).finish_non_exhaustive()
    }
}

impl DynamoStore {
    /// A store on `table`, through `endpoint` when given (DynamoDB Local), otherwise through the
    /// default AWS credential and region chain. With an endpoint and no AWS credentials in the
    /// environment, fixed local ones are used: DynamoDB Local accepts any.
    pub async fn connect(table: &str, endpoint: Option<&str>) -> Self {
        let loader = sdk_loader(endpoint)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_attempt_timeout(Duration::from_secs(3))
                    .operation_timeout(Duration::from_secs(8))
                    .build(),
            )
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
        let shared = loader.load().await;
        let calls = Arc::new(AtomicU64::new(0));
        let config = aws_sdk_dynamodb::config::Builder::from(&shared)
            .interceptor(CountCalls(Arc::clone(&calls)))
            .build();
        Self { client: Client::from_conf(config), table: table.to_owned(), calls }
    }

    /// The table's name.
    #[must_use]
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The SDK client underneath, for tools and tests that need calls the ports do not make.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How many DynamoDB calls this store (and its clones) has made.
    #[must_use]
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Whether the table exists.
    pub async fn table_exists(&self) -> StoreResult<bool> {
        match self.client.describe_table().table_name(&self.table).send().await {
            Ok(_) => Ok(true),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => {
                Ok(false)
            }
            Err(error) => Err(failure("describing the table", &error)),
        }
    }

    /// Creates the table and its index, on-demand billing, and waits until it is active.
    /// Idempotent: an existing table is left as it is. Answers whether it created one.
    pub async fn create_table(&self) -> StoreResult<bool> {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .context("an attribute definition")
        };
        let key_part = |name: &str, kind: KeyType| {
            KeySchemaElement::builder().attribute_name(name).key_type(kind).build().context("a key schema")
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(BY_ACTIVITY)
            .key_schema(key_part("gsi1pk", KeyType::Hash)?)
            .key_schema(key_part("gsi1sk", KeyType::Range)?)
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()
            .context("the index definition")?;
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("pk")?)
            .attribute_definitions(attribute("sk")?)
            .attribute_definitions(attribute("gsi1pk")?)
            .attribute_definitions(attribute("gsi1sk")?)
            .key_schema(key_part("pk", KeyType::Hash)?)
            .key_schema(key_part("sk", KeyType::Range)?)
            .global_secondary_indexes(index)
            .send()
            .await;
        let created = match created {
            Ok(_) => true,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_resource_in_use_exception()) => false,
            Err(error) => return Err(failure("creating the table", &error)),
        };
        for _ in 0..120 {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| failure("describing the table", &e))?;
            let table = described.table();
            let active = table.and_then(|t| t.table_status()).is_some_and(|s| s.as_str() == "ACTIVE");
            let indexes_active = table
                .map(|t| t.global_secondary_indexes())
                .unwrap_or_default()
                .iter()
                .all(|i| i.index_status().is_none_or(|s| s.as_str() == "ACTIVE"));
            if active && indexes_active {
                return Ok(created);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(anyhow::anyhow!("table {} did not become active within a minute", self.table).into())
    }

    async fn get(&self, key: Item, what: &str) -> StoreResult<Option<Item>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failure(what, &e))?;
        Ok(output.item)
    }

    /// The head of `dialogue` as its summary, if `owner` owns it.
    async fn owned_summary(&self, owner: UserId, dialogue: DialogueId) -> StoreResult<DialogueSummary> {
        let head = self.get(key(dialogue_pk(dialogue), message_sk(1)), "reading a dialogue's head").await?;
        match head {
            Some(item) if owned_by(&item, owner) => Ok(summary_from(&item)?),
            _ => Err(StoreError::NotFound),
        }
    }

    /// One attempt at an append: `Ok(None)` when another append won the race.
    async fn try_append(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        message: &NewMessage,
        attempt: u32,
    ) -> StoreResult<Option<Message>> {
        let mut summary = self.owned_summary(owner, dialogue).await?;
        let read_count = summary.message_count;
        let appended = message.clone().follow(dialogue, summary.tail_id, read_count);
        summary.record_append(&appended);

        let new_message = Put::builder()
            .table_name(&self.table)
            .set_item(Some(message_item(owner, &appended)?))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .context("the put of the new message")?;
        let mut head = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(dialogue_pk(dialogue), message_sk(1))))
            .update_expression(
                "SET message_count = :count, tail_id = :tail, updated_at = :updated, gsi1sk = :activity",
            )
            .condition_expression(
                "message_count = :read AND attribute_not_exists(deleting) AND attribute_not_exists(forking)",
            )
            .expression_attribute_values(":count", n(summary.message_count))
            .expression_attribute_values(":tail", s(appended.id.to_string()))
            .expression_attribute_values(":updated", n(summary.updated_at.timestamp_millis()))
            .expression_attribute_values(
                ":activity",
                s(activity_sk(summary.updated_at.timestamp_millis(), dialogue)),
            )
            .expression_attribute_values(":read", n(read_count));
        let mut actions = vec![TransactWriteItem::builder().put(new_message).build()];
        if read_count == 1 {
            // The head is also the tail: one item takes one action in a transaction.
            head = head
                .update_expression(
                    "SET message_count = :count, tail_id = :tail, updated_at = :updated, gsi1sk = :activity, \
                     next_id = :tail",
                )
                .condition_expression(
                    "message_count = :read AND attribute_not_exists(next_id) AND attribute_not_exists(deleting) \
                     AND attribute_not_exists(forking)",
                );
        } else {
            let tail = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(dialogue_pk(dialogue), message_sk(read_count))))
                .update_expression("SET next_id = :next")
                .condition_expression("attribute_exists(pk) AND attribute_not_exists(next_id)")
                .expression_attribute_values(":next", s(appended.id.to_string()))
                .build()
                .context("the update of the tail")?;
            actions.push(TransactWriteItem::builder().update(tail).build());
        }
        actions.push(
            TransactWriteItem::builder().update(head.build().context("the update of the head")?).build(),
        );

        // The token makes an SDK retry of this very attempt idempotent; a new attempt (after a
        // lost race) writes other items, so it gets a token of its own.
        let token = format!("{}-{attempt}", uuid_simple(appended.id));
        let written = self
            .client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .client_request_token(token)
            .send()
            .await;
        match written {
            Ok(_) => Ok(Some(appended)),
            Err(error) => {
                let lost_race = cancellation_codes(&error)
                    .iter()
                    .any(|code| matches!(*code, "ConditionalCheckFailed" | "TransactionConflict"));
                if lost_race { Ok(None) } else { Err(failure("appending a message", &error)) }
            }
        }
    }
}

/// Why each action of a cancelled transaction was refused, in the order of the actions (`None`
/// for one that was fine); empty when the transaction failed otherwise.
fn cancellation_codes<R>(error: &SdkError<TransactWriteItemsError, R>) -> Vec<&str> {
    match error.as_service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) => {
            cancelled.cancellation_reasons().iter().map(|reason| reason.code().unwrap_or("None")).collect()
        }
        _ => Vec::new(),
    }
}

/// An id's 32 hex digits, so that a suffix still fits a 36-character request token.
fn uuid_simple(id: MessageId) -> String {
    id.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A wait before attempt `attempt`, jittered by the message's own random bits so that racing
/// appenders spread out.
fn backoff(id: MessageId, attempt: u32) -> Duration {
    let cap = BACKOFF_CAP.as_millis() as u64;
    let ceiling = (2_u64.saturating_pow(attempt.min(10))).min(cap).max(2);
    let noise = u64::from(id.as_bytes()[15]) * 131 + u64::from(attempt) * 7919;
    Duration::from_millis(noise % ceiling)
}

#[async_trait]
impl SafetyCounts for DynamoStore {
    async fn count_screening(
        &self,
        day: chrono::NaiveDate,
        level: ifs_domain::SafetyLevel,
        screener: &str,
    ) -> StoreResult<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(SAFETY_PK.to_owned(), crate::safety_key(day, level, screener))))
            .update_expression("ADD #count :one")
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":one", n(1))
            .send()
            .await
            .map_err(|e| failure("counting a screening", &e))?;
        Ok(())
    }

    async fn screenings(&self, since: chrono::NaiveDate) -> StoreResult<Vec<SafetyCount>> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk >= :since")
            .expression_attribute_values(":pk", s(SAFETY_PK))
            .expression_attribute_values(":since", s(since.to_string()))
            .consistent_read(true);
        let mut all = Vec::new();
        Self::each_item(query, "reading the safety counts", |item| {
            all.push(crate::safety_count(text(item, "sk")?, number(item, "count")?)?);
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(all)
    }
}

#[async_trait]
impl UserStore for DynamoStore {
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        // The email item is the uniqueness constraint, and keeps a copy of the user so that a
        // login is one read.
        let put = |item: Item| {
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map(|put| TransactWriteItem::builder().put(put).build())
                .context("a put")
        };
        let written = self
            .client
            .transact_write_items()
            .transact_items(put(user_item(email_pk(&user.email), "EMAIL", user))?)
            .transact_items(put(user_item(user_pk(user.id), "USER", user))?)
            .send()
            .await;
        match written {
            Ok(_) => Ok(()),
            Err(error) => {
                // The first action is the email's put.
                if cancellation_codes(&error).first() == Some(&"ConditionalCheckFailed") {
                    Err(StoreError::EmailTaken)
                } else {
                    Err(failure("creating a user", &error))
                }
            }
        }
    }

    async fn user_by_email(&self, email: &Email) -> StoreResult<Option<UserRecord>> {
        let item = self.get(key(email_pk(email), "EMAIL"), "reading a user by email").await?;
        Ok(item.as_ref().map(user_from).transpose()?)
    }

    async fn delete_user(&self, user: &UserRecord) -> StoreResult<()> {
        // Both items in one transaction; the email's only if it is still this user's.
        let email = aws_sdk_dynamodb::types::Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key(email_pk(&user.email), "EMAIL")))
            .condition_expression("attribute_not_exists(pk) OR id = :id")
            .expression_attribute_values(":id", s(user.id.to_string()))
            .build()
            .context("the delete of the email")?;
        let record = aws_sdk_dynamodb::types::Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key(user_pk(user.id), "USER")))
            .build()
            .context("the delete of the user")?;
        let deleted = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().delete(email).build())
            .transact_items(TransactWriteItem::builder().delete(record).build())
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            // The email belongs to someone else by now: only the user's own item goes.
            Err(error) if cancellation_codes(&error).first() == Some(&"ConditionalCheckFailed") => {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(key(user_pk(user.id), "USER")))
                    .send()
                    .await
                    .map_err(|e| failure("deleting a user", &e))?;
                Ok(())
            }
            Err(error) => Err(failure("deleting a user", &error)),
        }
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        let item = self.get(key(user_pk(id), "USER"), "reading a user").await?;
        Ok(item.as_ref().map(user_from).transpose()?)
    }

    async fn set_country(&self, id: UserId, country: Option<ifs_domain::Country>) -> StoreResult<UserRecord> {
        let mut user = self.user_by_id(id).await?.ok_or(StoreError::NotFound)?;
        user.country = country;
        // Both of the user's items carry the record (the email's is what a login reads); each
        // is replaced only if it is still this user's.
        let put = |item: Item| {
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("id = :id")
                .expression_attribute_values(":id", s(id.to_string()))
                .build()
                .map(|put| TransactWriteItem::builder().put(put).build())
                .context("a put")
        };
        let written = self
            .client
            .transact_write_items()
            .transact_items(put(user_item(email_pk(&user.email), "EMAIL", &user))?)
            .transact_items(put(user_item(user_pk(user.id), "USER", &user))?)
            .send()
            .await;
        match written {
            Ok(_) => Ok(user),
            // Deleted meanwhile (or the email since taken by someone else).
            Err(error) if cancellation_codes(&error).contains(&"ConditionalCheckFailed") => {
                Err(StoreError::NotFound)
            }
            Err(error) => Err(failure("setting a user's country", &error)),
        }
    }
}

#[async_trait]
impl DialogueStore for DynamoStore {
    async fn start_dialogue(&self, owner: UserId, first: NewMessage) -> StoreResult<Message> {
        let head = first.into_head();
        let summary = DialogueSummary::of_head(owner, &head);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(head_item(&summary, &head)?))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| failure("starting a dialogue", &e))?;
        Ok(head)
    }

    async fn append_message(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        message: NewMessage,
    ) -> StoreResult<Message> {
        for attempt in 0..APPEND_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(message.id, attempt)).await;
            }
            if let Some(appended) = self.try_append(owner, dialogue, &message, attempt).await? {
                return Ok(appended);
            }
        }
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "appending to {dialogue} lost {APPEND_ATTEMPTS} races in a row"
        )))
    }

    async fn messages_before(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        before_seq: u64,
        count: usize,
    ) -> StoreResult<Vec<Message>> {
        if count == 0 || before_seq <= 1 {
            self.owned_summary(owner, dialogue).await?;
            return Ok(Vec::new());
        }
        // Newest first from just before `before_seq`, then turned around.
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk < :before")
            .expression_attribute_values(":pk", s(dialogue_pk(dialogue)))
            .expression_attribute_values(":before", s(message_sk(before_seq)))
            .scan_index_forward(false)
            .consistent_read(true);
        let (mut messages, _) = self
            .read_page(query, None, owner, PageFill::counting(count), message_from, "reading memory")
            .await?;
        if messages.is_empty() {
            return Err(StoreError::NotFound);
        }
        messages.reverse();
        Ok(messages)
    }

    async fn messages(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        limit: Limit,
        after: Option<MessageCursor>,
    ) -> StoreResult<Page<Message, MessageCursor>> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk > :after")
            .expression_attribute_values(":pk", s(dialogue_pk(dialogue)))
            .expression_attribute_values(":after", s(message_sk(after.map_or(0, |c| c.after_seq))))
            .consistent_read(true);
        let page = self.read_page(query, None, owner, PageFill::new(limit), message_from, "reading messages");
        let (items, more) = if after.is_some() {
            // A page past the head does not show whose it is, nor whether it is being deleted:
            // its head is read at the same time and decides.
            let (page, _) = tokio::try_join!(page, self.owned_summary(owner, dialogue))?;
            page
        } else {
            page.await?
        };
        if items.is_empty() && after.is_none() {
            return Err(StoreError::NotFound);
        }
        let next = more.then(|| items.last().map(|m| MessageCursor { after_seq: m.seq })).flatten();
        Ok(Page { items, next })
    }

    async fn replace_reply(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        reply: MessageId,
        new: NewMessage,
    ) -> StoreResult<Message> {
        for attempt in 0..APPEND_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(new.id, attempt)).await;
            }
            if let Some(regenerated) = self.try_replace(owner, dialogue, reply, &new).await? {
                return Ok(regenerated);
            }
        }
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "regenerating in {dialogue} lost {APPEND_ATTEMPTS} races in a row"
        )))
    }

    async fn versions(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        message: MessageId,
    ) -> StoreResult<Vec<ReplyVersion>> {
        self.owned_summary(owner, dialogue).await?;
        let seq = self.position(dialogue, message).await?.ok_or(StoreError::NotFound)?;
        let item = self
            .get(key(dialogue_pk(dialogue), message_sk(seq)), "reading a message")
            .await?
            .ok_or(StoreError::NotFound)?;
        let current = message_from(&item)?;
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :seq)")
            .expression_attribute_values(":pk", s(versions_pk(dialogue)))
            .expression_attribute_values(":seq", s(format!("{seq:020}#")))
            .consistent_read(true);
        let mut all = Vec::new();
        Self::each_item(query, "reading a reply's versions", |item| {
            let version = serde_json::from_str::<ReplyVersion>(text(item, "version")?);
            all.push(version.context("a stored version")?);
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        all.push(ReplyVersion::of(&current));
        Ok(all)
    }

    async fn dialogue(&self, owner: UserId, dialogue: DialogueId) -> StoreResult<DialogueSummary> {
        self.owned_summary(owner, dialogue).await
    }

    async fn rename_dialogue(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        title: String,
    ) -> StoreResult<DialogueSummary> {
        // One conditional update of the head's title: an append's transaction conditions on the
        // head's message count, not its title, so the two commute whichever lands first.
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dialogue_pk(dialogue), message_sk(1))))
            .update_expression("SET #title = :title")
            .condition_expression(
                "#owner = :owner AND attribute_exists(#title) AND attribute_not_exists(#deleting) \
                 AND attribute_not_exists(#forking)",
            )
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#title", "title")
            .expression_attribute_names("#deleting", DELETING)
            .expression_attribute_names("#forking", FORKING)
            .expression_attribute_values(":title", s(title))
            .expression_attribute_values(":owner", s(owner.to_string()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match updated {
            Ok(output) => Ok(summary_from(output.attributes().context("the renamed head")?)?),
            Err(error) => Err(unless_refused("renaming a dialogue", &error)),
        }
    }

    async fn fork_dialogue(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        through: MessageId,
    ) -> StoreResult<DialogueSummary> {
        let head = self.get(key(dialogue_pk(dialogue), message_sk(1)), "reading a dialogue's head").await?;
        let (original, head) = match head {
            Some(item) if owned_by(&item, owner) => (summary_from(&item)?, message_from(&item)?),
            _ => return Err(StoreError::NotFound),
        };
        let count = self.position(dialogue, through).await?.ok_or(StoreError::NotFound)?;
        if count > FORK_MAX_MESSAGES {
            return Err(StoreError::ForkTooLong);
        }
        let fork = Fork::new(ForkOrigin { dialogue_id: dialogue, message_id: through }, count);
        let copied = self.write_fork(owner, &fork, original.title, &head).await;
        if copied.is_err() {
            // What was written of it is hidden; deleting it now is a courtesy, since the owner's
            // next deletion or the operator's repair would.
            if let Err(error) = self.delete_dialogue(owner, fork.dialogue_id()).await {
                tracing::warn!(error = %error, "a fork cut short is left for the next deletion");
            }
        }
        copied
    }

    async fn delete_dialogue(&self, owner: UserId, dialogue: DialogueId) -> StoreResult<()> {
        self.hide(owner, dialogue).await?;
        self.purge(dialogue).await
    }

    async fn delete_dialogues(&self, owner: UserId) -> StoreResult<u64> {
        use futures::{StreamExt as _, TryStreamExt as _};

        // Every listed dialogue is hidden first, so that all of them leave the listing within
        // moments even if purging the messages is cut short; then the hidden ones, and any left
        // half-deleted by an earlier attempt, are purged.
        let mut doomed = BTreeSet::new();
        // Unfinished ones are hidden again too: that ends a fork cut short, whose writes condition
        // on a mark hiding removes.
        for prefix in [owner_pk(owner), deleting_pk(owner)] {
            let mut start = None;
            loop {
                let output = self
                    .client
                    .query()
                    .table_name(&self.table)
                    .index_name(BY_ACTIVITY)
                    .key_condition_expression("gsi1pk = :owner")
                    .expression_attribute_values(":owner", s(&prefix))
                    .projection_expression("#pk")
                    .expression_attribute_names("#pk", "pk")
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| failure("finding dialogues to delete", &e))?;
                let found = output.items().iter().map(dialogue_of).collect::<anyhow::Result<Vec<_>>>()?;
                futures::stream::iter(found.clone().into_iter().map(|dialogue| self.hide(owner, dialogue)))
                    .buffer_unordered(DELETE_PARALLEL)
                    .or_else(|error| async move {
                        // Deleted meanwhile by another request: nothing left to hide.
                        if matches!(error, StoreError::NotFound) { Ok(()) } else { Err(error) }
                    })
                    .try_collect::<Vec<()>>()
                    .await?;
                doomed.extend(found);
                start = output.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
        }
        futures::stream::iter(
            doomed.iter().copied().collect::<Vec<_>>().into_iter().map(|dialogue| self.purge(dialogue)),
        )
        .buffer_unordered(DELETE_PARALLEL)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(doomed.len() as u64)
    }

    async fn dialogues(
        &self,
        owner: UserId,
        limit: Limit,
        after: Option<DialogueCursor>,
    ) -> StoreResult<Page<DialogueSummary, DialogueCursor>> {
        let start = after.map(|cursor| {
            let mut start = key(dialogue_pk(cursor.id), message_sk(1));
            start.insert("gsi1pk".into(), s(owner_pk(owner)));
            start.insert("gsi1sk".into(), s(activity_sk(cursor.updated_at_ms, cursor.id)));
            start
        });
        // The index holds whole heads, text included; only the summary is read back.
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_ACTIVITY)
            .key_condition_expression("gsi1pk = :owner")
            .expression_attribute_values(":owner", s(owner_pk(owner)))
            .projection_expression(SUMMARY)
            .set_expression_attribute_names(Some(attribute_names(SUMMARY)))
            .scan_index_forward(false);
        // Titles are short, so the limit alone bounds the page.
        let fill = PageFill::counting(limit.get());
        let (items, more) =
            self.read_page(query, start, owner, fill, summary_from, "listing dialogues").await?;
        let next = more.then(|| items.last().map(|d| DialogueCursor::after(d.updated_at, d.id))).flatten();
        Ok(Page { items, next })
    }
}

impl DynamoStore {
    /// The first step of a deletion: marks the head as being deleted and moves it out of the
    /// owner's listing, in one conditional update, so that from then on every read and append
    /// answers not found. Hiding a hidden dialogue again is harmless: that is how an
    /// interrupted deletion resumes.
    async fn hide(&self, owner: UserId, dialogue: DialogueId) -> StoreResult<()> {
        let hidden = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(dialogue_pk(dialogue), message_sk(1))))
            .update_expression(
                "SET #deleting = if_not_exists(#deleting, :now), gsi1pk = :hidden REMOVE #forking",
            )
            .condition_expression("#owner = :owner AND attribute_exists(#title)")
            .expression_attribute_names("#deleting", DELETING)
            .expression_attribute_names("#forking", FORKING)
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#title", "title")
            .expression_attribute_values(":now", n(chrono::Utc::now().timestamp_millis()))
            .expression_attribute_values(":hidden", s(deleting_pk(owner)))
            .expression_attribute_values(":owner", s(owner.to_string()))
            .send()
            .await;
        match hidden {
            Ok(_) => Ok(()),
            Err(error) => Err(unless_refused("hiding a dialogue to delete it", &error)),
        }
    }

    /// One attempt at regenerating: `Ok(None)` when an append or another regeneration won a
    /// race and the state must be read again.
    async fn try_replace(
        &self,
        owner: UserId,
        dialogue: DialogueId,
        reply: MessageId,
        new: &NewMessage,
    ) -> StoreResult<Option<Message>> {
        let summary = self.owned_summary(owner, dialogue).await?;
        if summary.tail_id != reply {
            return Err(RegenerateRefusal::NotLastReply.into());
        }
        let count = summary.message_count;
        let item = self
            .get(key(dialogue_pk(dialogue), message_sk(count)), "reading the last reply")
            .await?
            .ok_or_else(|| {
            StoreError::Unexpected(anyhow::anyhow!("the tail of {dialogue} is missing"))
        })?;
        let tail = message_from(&item)?;
        let regenerated = tail.regenerated(new.clone())?;
        let earlier = ReplyVersion::of(&tail);
        let updated_at = summary.updated_at.max(regenerated.created_at).timestamp_millis();

        let mut version = key(versions_pk(dialogue), version_sk(tail.seq, earlier.version));
        version.insert("owner".into(), s(owner.to_string()));
        version.insert("version".into(), s(serde_json::to_string(&earlier).context("encoding a version")?));
        let keep = Put::builder()
            .table_name(&self.table)
            .set_item(Some(version))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .context("the put of the earlier version")?;
        let meta = serde_json::to_string(&regenerated.meta).context("encoding reply metadata")?;
        // The tail as it was read: still the last, still this version.
        let mut replace = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(dialogue_pk(dialogue), message_sk(count))))
            .update_expression("SET content = :content, created_at = :created, meta = :meta")
            .expression_attribute_values(":content", s(&regenerated.content))
            .expression_attribute_values(":created", n(regenerated.created_at.timestamp_millis()))
            .expression_attribute_values(":meta", s(meta))
            .expression_attribute_values(":id", s(reply.to_string()));
        replace = match optional_text(&item, "meta")? {
            Some(old) => replace
                .condition_expression("id = :id AND attribute_not_exists(next_id) AND meta = :old")
                .expression_attribute_values(":old", s(old)),
            None => replace.condition_expression(
                "id = :id AND attribute_not_exists(next_id) AND attribute_not_exists(meta)",
            ),
        };
        let head = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(dialogue_pk(dialogue), message_sk(1))))
            .update_expression("SET updated_at = :updated, gsi1sk = :activity")
            .condition_expression(
                "message_count = :count AND attribute_not_exists(deleting) AND attribute_not_exists(forking)",
            )
            .expression_attribute_values(":updated", n(updated_at))
            .expression_attribute_values(":activity", s(activity_sk(updated_at, dialogue)))
            .expression_attribute_values(":count", n(count))
            .build()
            .context("the update of the head")?;
        let written = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(keep).build())
            .transact_items(
                TransactWriteItem::builder()
                    .update(replace.build().context("the update of the reply")?)
                    .build(),
            )
            .transact_items(TransactWriteItem::builder().update(head).build())
            .send()
            .await;
        match written {
            Ok(_) => Ok(Some(regenerated)),
            Err(error) => {
                let lost_race = cancellation_codes(&error)
                    .iter()
                    .any(|code| matches!(*code, "ConditionalCheckFailed" | "TransactionConflict"));
                if lost_race { Ok(None) } else { Err(failure("regenerating a reply", &error)) }
            }
        }
    }

    /// Where `message` is in `dialogue` (its seq), reading ids only, page after page.
    async fn position(&self, dialogue: DialogueId, message: MessageId) -> StoreResult<Option<u64>> {
        let wanted = message.to_string();
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_names("#pk", "pk")
            .expression_attribute_names("#id", "id")
            .expression_attribute_names("#seq", "seq")
            .expression_attribute_values(":pk", s(dialogue_pk(dialogue)))
            .projection_expression("#id, #seq")
            .consistent_read(true);
        let mut found = None;
        Self::each_item(query, "finding a message", |item| {
            if text(item, "id")? != wanted {
                return Ok(ControlFlow::Continue(()));
            }
            found = Some(number(item, "seq")?);
            Ok(ControlFlow::Break(()))
        })
        .await?;
        Ok(found)
    }

    /// Writes `fork` of the dialogue whose head is `head`: its head first, hidden and marked
    /// with a token, then the copies a page at a time, each page in one transaction that checks
    /// the mark, then one update that shows it. A deletion that takes the mark away stops the
    /// copying before it could leave orphans.
    async fn write_fork(
        &self,
        owner: UserId,
        fork: &Fork,
        title: String,
        head: &Message,
    ) -> StoreResult<DialogueSummary> {
        let token = uuid_simple(MessageId::generate());
        let copy = fork.copy(head);
        let mut summary = fork.summary(owner, title, &copy, copy.created_at);
        let mut item = head_item(&summary, &copy)?;
        item.insert("gsi1pk".into(), s(deleting_pk(owner)));
        item.insert(FORKING.into(), s(&token));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| failure("starting a fork", &e))?;

        let fork_head = key(dialogue_pk(fork.dialogue_id()), message_sk(1));
        let mut next = 2;
        while next <= fork.len() {
            let query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
                .expression_attribute_values(":pk", s(dialogue_pk(fork.origin.dialogue_id)))
                .expression_attribute_values(":from", s(message_sk(next)))
                .expression_attribute_values(":to", s(message_sk(fork.len())))
                .consistent_read(true);
            let fill = PageFill::new(Limit::new_clamped(FORK_BATCH, FORK_BATCH));
            let (page, _) =
                self.read_page(query, None, owner, fill, message_from, "reading what to fork").await?;
            // A gap means the original is being deleted under the fork.
            if page.first().is_none_or(|m| m.seq != next) || page.windows(2).any(|w| w[1].seq != w[0].seq + 1)
            {
                return Err(StoreError::NotFound);
            }
            let check = ConditionCheck::builder()
                .table_name(&self.table)
                .set_key(Some(fork_head.clone()))
                .condition_expression("#forking = :token")
                .expression_attribute_names("#forking", FORKING)
                .expression_attribute_values(":token", s(&token))
                .build()
                .context("the check of the fork's head")?;
            let mut actions = vec![TransactWriteItem::builder().condition_check(check).build()];
            for original in &page {
                let copy = fork.copy(original);
                summary.updated_at = summary.updated_at.max(copy.created_at);
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(message_item(owner, &copy)?))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .context("the put of a copy")?;
                actions.push(TransactWriteItem::builder().put(put).build());
            }
            self.copy_batch(actions, fork.dialogue_id()).await?;
            next += page.len() as u64;
        }

        let shown = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(fork_head))
            .update_expression(
                "SET updated_at = :updated, gsi1pk = :owner, gsi1sk = :activity REMOVE #forking",
            )
            .condition_expression("#forking = :token")
            .expression_attribute_names("#forking", FORKING)
            .expression_attribute_values(":updated", n(summary.updated_at.timestamp_millis()))
            .expression_attribute_values(":owner", s(owner_pk(owner)))
            .expression_attribute_values(
                ":activity",
                s(activity_sk(summary.updated_at.timestamp_millis(), summary.id)),
            )
            .expression_attribute_values(":token", s(&token))
            .send()
            .await;
        match shown {
            Ok(_) => Ok(summary),
            Err(error) => Err(unless_refused("showing a fork", &error)),
        }
    }

    /// Writes one transaction of a fork's copies, whose first action checks the fork's mark:
    /// not found once a deletion took the mark; tried again while it only conflicts with
    /// another transaction on the same items (a cancelled transaction wrote nothing).
    async fn copy_batch(&self, actions: Vec<TransactWriteItem>, fork: DialogueId) -> StoreResult<()> {
        for attempt in 0..APPEND_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(MessageId::from_bytes(*fork.as_bytes()), attempt)).await;
            }
            let written =
                self.client.transact_write_items().set_transact_items(Some(actions.clone())).send().await;
            let Err(error) = written else { return Ok(()) };
            let codes = cancellation_codes(&error);
            if codes.first() == Some(&"ConditionalCheckFailed") {
                return Err(StoreError::NotFound);
            }
            if !codes.contains(&"TransactionConflict") {
                return Err(failure("copying messages into a fork", &error));
            }
        }
        Err(StoreError::Unavailable(anyhow::anyhow!("copying into fork {fork} kept conflicting")))
    }

    /// The rest of a deletion, once the head is marked: every other item of the dialogue in
    /// batches, then the head. Whatever stops it midway leaves a marked head, which the next
    /// deletion (or `ifs-guide check --repair-deletions`) takes up again.
    async fn purge(&self, dialogue: DialogueId) -> StoreResult<()> {
        self.delete_partition(dialogue_pk(dialogue), Some(message_sk(1))).await?;
        self.delete_partition(versions_pk(dialogue), None).await?;
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(dialogue_pk(dialogue), message_sk(1))))
            .send()
            .await
            .map_err(|e| failure("deleting a dialogue's head", &e))?;
        Ok(())
    }

    /// Deletes every item under `pk` (after the sort key `after`, if given), a page of keys at a
    /// time, until a consistent read finds none.
    async fn delete_partition(&self, pk: String, after: Option<String>) -> StoreResult<()> {
        loop {
            // From the top each time: a consistent read no longer sees what was deleted.
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_names("#sk", "sk")
                .expression_attribute_values(":pk", s(&pk))
                .projection_expression("#pk, #sk")
                .consistent_read(true)
                .limit(DELETE_PAGE);
            query = match &after {
                Some(after) => query
                    .key_condition_expression("#pk = :pk AND #sk > :after")
                    .expression_attribute_values(":after", s(after)),
                None => query.key_condition_expression("#pk = :pk"),
            };
            let output = query.send().await.map_err(|e| failure("reading what to delete", &e))?;
            let keys = output.items;
            let Some(keys) = keys.filter(|keys| !keys.is_empty()) else { return Ok(()) };
            futures::future::try_join_all(keys.chunks(BATCH_WRITE).map(|chunk| self.delete_batch(chunk)))
                .await?;
        }
    }

    /// Deletes the items `keys` name (at most [`BATCH_WRITE`]), retrying what DynamoDB leaves
    /// unprocessed.
    async fn delete_batch(&self, keys: &[Item]) -> StoreResult<()> {
        let mut requests = keys
            .iter()
            .map(|item| {
                let key = key(text(item, "pk")?.to_owned(), text(item, "sk")?);
                let delete =
                    DeleteRequest::builder().set_key(Some(key)).build().context("a delete request")?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for attempt in 0..BATCH_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF_CAP * attempt.min(8)).await;
            }
            let output = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(|e| failure("deleting messages", &e))?;
            requests =
                output.unprocessed_items.and_then(|mut left| left.remove(&self.table)).unwrap_or_default();
            if requests.is_empty() {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(anyhow::anyhow!(
            "DynamoDB left {} deletions unprocessed {BATCH_ATTEMPTS} times",
            requests.len()
        )))
    }

    /// Runs `query` to its last page, following `LastEvaluatedKey` (a response stops at 1 MB),
    /// and hands each item to `each` until it answers `Break`.
    async fn each_item(
        query: QueryFluentBuilder,
        what: &str,
        mut each: impl FnMut(&Item) -> StoreResult<ControlFlow<()>> + Send,
    ) -> StoreResult<()> {
        let mut start = None;
        loop {
            let output =
                query.clone().set_exclusive_start_key(start).send().await.map_err(|e| failure(what, &e))?;
            for item in output.items() {
                if each(item)?.is_break() {
                    return Ok(());
                }
            }
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok(());
            }
        }
    }

    /// Runs `query` from `start` until `fill` is full or the items run out, following
    /// `LastEvaluatedKey`: DynamoDB stops each response at 1 MB read, and a page that stopped
    /// there lost the rest of the dialogue (20 turns of 16,000 emoji answered 33 of 40 messages
    /// and no cursor). Answers the items and whether more follow them. Every item must belong to
    /// `owner`, and the first that does not ends the read as not found: a dialogue is one
    /// owner's throughout.
    async fn read_page<T>(
        &self,
        query: QueryFluentBuilder,
        mut start: Option<Item>,
        owner: UserId,
        mut fill: PageFill,
        decode: fn(&Item) -> anyhow::Result<T>,
        what: &str,
    ) -> StoreResult<(Vec<T>, bool)> {
        let mut items = Vec::with_capacity(fill.room());
        loop {
            // One more than the room, to know whether another page follows.
            let asked = i32::try_from(fill.room().saturating_add(1)).unwrap_or(i32::MAX);
            let output = query
                .clone()
                .limit(asked)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| failure(what, &e))?;
            for item in output.items() {
                if !owned_by(item, owner) {
                    return Err(StoreError::NotFound);
                }
                let content = optional_text(item, "content")?.map_or(0, str::len);
                if !fill.admit(content) {
                    return Ok((items, true));
                }
                items.push(decode(item)?);
            }
            start = output.last_evaluated_key;
            if start.is_none() {
                return Ok((items, false));
            }
        }
    }
}

/// What a dialogue listing reads of a head: its summary, not its text.
const SUMMARY: &str = "#pk, #id, #owner, #title, #created, #updated, #count, #tail, #fdlg, #fmsg";

/// What the audit reads of an item: the links and the summary, never the content.
const AUDITED: &str = "#pk, #sk, #id, #seq, #prev, #next, #created, #owner, #title, #updated, #count, #tail, \
                       #gpk, #gsk, #deleting, #forking";

/// The names behind the aliases a projection uses (`#pk` and the rest).
fn attribute_names(projection: &str) -> HashMap<String, String> {
    [
        ("#pk", "pk"),
        ("#sk", "sk"),
        ("#id", "id"),
        ("#seq", "seq"),
        ("#prev", "prev_id"),
        ("#next", "next_id"),
        ("#created", "created_at"),
        ("#owner", "owner"),
        ("#title", "title"),
        ("#updated", "updated_at"),
        ("#count", "message_count"),
        ("#tail", "tail_id"),
        ("#gpk", "gsi1pk"),
        ("#gsk", "gsi1sk"),
        ("#deleting", DELETING),
        ("#forking", FORKING),
        ("#fdlg", "forked_from_dialogue"),
        ("#fmsg", "forked_from_message"),
    ]
    .into_iter()
    .filter(|(alias, _)| projection.split(", ").any(|used| used == *alias))
    .map(|(alias, name)| (alias.to_owned(), name.to_owned()))
    .collect()
}

/// The position a message item is filed under, from its sort key.
fn position_of(item: &Item) -> Option<u64> {
    text(item, "sk").ok()?.strip_prefix("MSG#")?.parse().ok()
}

/// Adds one item to the dialogue being read; what cannot be read becomes a finding.
fn gather(stored: &mut StoredDialogue, item: &Item) {
    let position = position_of(item).unwrap_or(0);
    let link = || -> anyhow::Result<StoredLink> {
        let message_id = |name: &str| -> anyhow::Result<Option<MessageId>> {
            optional_text(item, name)?
                .map(|raw| {
                    MessageId::parse(raw).map_err(|_| anyhow::anyhow!("attribute {name} is not an id"))
                })
                .transpose()
        };
        anyhow::ensure!(position > 0, "the sort key is not a message's");
        Ok(StoredLink {
            position,
            seq: number(item, "seq")?,
            id: id(item, "id", MessageId::parse)?,
            dialogue_id: dialogue_of(item)?,
            prev_id: message_id("prev_id")?,
            next_id: message_id("next_id")?,
            created_at: instant(item, "created_at")?,
            owner: optional_text(item, "owner")?.map(UserId::parse).transpose().ok().flatten(),
        })
    };
    match link() {
        Ok(link) => stored.messages.push(link),
        Err(error) => stored.unreadable.push((position, format!("{error:#}"))),
    }
    if position == 1 && (item.contains_key(DELETING) || item.contains_key(FORKING)) {
        stored.deleting = true;
    }
    if position == 1 && item.contains_key("title") {
        match summary_from(item).and_then(|summary| Ok((summary, listing_of(item, stored.id)?))) {
            Ok((summary, listed)) => {
                stored.summary = Some(summary);
                stored.listed = listed;
            }
            Err(error) => stored.unreadable.push((1, format!("the summary: {error:#}"))),
        }
    }
}

/// The sparse index entry a head carries: (owner, activity ms), if it has one.
fn listing_of(item: &Item, dialogue: DialogueId) -> anyhow::Result<Vec<(UserId, i64)>> {
    let (Some(owner), Some(activity)) = (optional_text(item, "gsi1pk")?, optional_text(item, "gsi1sk")?)
    else {
        return Ok(Vec::new());
    };
    if owner.starts_with("DELETING#") {
        return Ok(Vec::new());
    }
    let owner = owner.strip_prefix("OWNER#").and_then(|raw| UserId::parse(raw).ok()).context("gsi1pk")?;
    let (ms, listed) = activity.split_once('#').context("gsi1sk")?;
    anyhow::ensure!(listed == dialogue.to_string(), "gsi1sk names dialogue {listed}");
    Ok(vec![(owner, ms.parse().context("gsi1sk")?)])
}

impl DynamoStore {
    /// Every item of one dialogue, read again by a consistent query.
    async fn reread(&self, dialogue: DialogueId) -> StoreResult<StoredDialogue> {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("#pk = :pk")
            .expression_attribute_values(":pk", s(dialogue_pk(dialogue)))
            .projection_expression(AUDITED)
            .set_expression_attribute_names(Some(attribute_names(AUDITED)))
            .consistent_read(true);
        let mut stored = StoredDialogue::new(dialogue);
        Self::each_item(query, "reading a dialogue to check", |item| {
            gather(&mut stored, item);
            Ok(ControlFlow::Continue(()))
        })
        .await?;
        Ok(stored)
    }
}

#[async_trait]
impl Audit for DynamoStore {
    /// One scan of the message items, grouped by dialogue as they come (DynamoDB returns an
    /// item collection in one run). A scan is not a snapshot: a dialogue caught mid-append looks
    /// broken, so every dialogue with a finding, and any that did not come in one run, is read
    /// again by a consistent query after the scan and judged on that.
    async fn audit(&self) -> StoreResult<AuditReport> {
        let mut report = AuditReport::default();
        let mut seen: HashMap<DialogueId, u64> = HashMap::new();
        let mut again: BTreeSet<DialogueId> = BTreeSet::new();
        let mut current: Option<StoredDialogue> = None;
        // A dialogue is judged at most once from the scan; one that needs a second look is
        // taken out of the report and judged on its re-read alone.
        let mut close = |done: StoredDialogue, report: &mut AuditReport| {
            if again.contains(&done.id) {
                return;
            }
            if let Some(messages) = seen.get(&done.id) {
                report.forget(done.id, *messages);
                again.insert(done.id);
                return;
            }
            let messages = done.messages.len() as u64;
            seen.insert(done.id, messages);
            if report.record(&done) {
                report.forget(done.id, messages);
                again.insert(done.id);
            }
        };
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(#pk, :dialogues)")
                .expression_attribute_values(":dialogues", s("DLG#"))
                .projection_expression(AUDITED)
                .set_expression_attribute_names(Some(attribute_names(AUDITED)))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| failure("scanning dialogues to check", &e))?;
            for item in page.items() {
                let dialogue = dialogue_of(item)?;
                if current.as_ref().is_none_or(|c| c.id != dialogue)
                    && let Some(done) = current.replace(StoredDialogue::new(dialogue))
                {
                    close(done, &mut report);
                }
                gather(current.as_mut().context("a dialogue being read")?, item);
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        if let Some(done) = current {
            close(done, &mut report);
        }
        for dialogue in again {
            let stored = self.reread(dialogue).await?;
            // Deleted whole while the scan went by: nothing is left to judge.
            if !(stored.messages.is_empty() && stored.unreadable.is_empty()) {
                report.record(&stored);
            }
        }
        Ok(report)
    }

    /// Finds the heads marked as being deleted through the index (it holds only heads) and
    /// purges each.
    async fn finish_deletions(&self) -> StoreResult<u64> {
        let mut finished = 0;
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .index_name(BY_ACTIVITY)
                .filter_expression("begins_with(#gpk, :deleting)")
                .expression_attribute_names("#gpk", "gsi1pk")
                .expression_attribute_names("#pk", "pk")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":deleting", s("DELETING#"))
                .projection_expression("#pk, #owner")
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| failure("finding unfinished deletions", &e))?;
            for item in page.items() {
                let dialogue = dialogue_of(item)?;
                // Hidden again first, which ends a fork still writing, so none of it outlives
                // the purge.
                match self.hide(id(item, "owner", UserId::parse)?, dialogue).await {
                    Ok(()) | Err(StoreError::NotFound) => {}
                    Err(error) => return Err(error),
                }
                self.purge(dialogue).await?;
                finished += 1;
            }
            start = page.last_evaluated_key;
            if start.is_none() {
                return Ok(finished);
            }
        }
    }
}
