//! [`Records`]: typed records over the untyped [`RecordClient`] — values in, [`Stored`] values
//! out, failures as the service's own error.

use std::fmt;
use std::marker::PhantomData;

use kino_api::datastore::{Resource, WatchResponse};
use kino_telemetry::TracedChannel;
use tonic::Status;

use super::client::{Page, RecordClient};
use super::error::{RecordError, WriteError};
use super::spec::{Spec, Stored, decode, to_resource};

/// Attempts of [`Records::put`] before it gives up on a record other writers keep changing.
const PUT_ATTEMPTS: usize = 5;

/// Typed records in the datastore, failing with the service's error `E` (any type that is
/// `From<RecordError>`; [`RecordError`] itself will do).
///
/// Writes answer [`WriteError`] so that compare-and-swap loops can branch on a lost race;
/// [`WriteError::into_error`] turns one into `E` where a race is a failure.
pub struct Records<E> {
    client: RecordClient,
    error: PhantomData<fn() -> E>,
}

impl<E> Clone for Records<E> {
    fn clone(&self) -> Self {
        Records {
            client: self.client.clone(),
            error: PhantomData,
        }
    }
}

impl<E> fmt::Debug for Records<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Records")
            .field("client", &self.client)
            .finish()
    }
}

impl<E: From<RecordError>> Records<E> {
    /// Uses `channel` to the gateway.
    pub fn new(channel: TracedChannel) -> Self {
        Records {
            client: RecordClient::new(channel),
            error: PhantomData,
        }
    }

    /// The untyped client underneath.
    pub fn client(&self) -> &RecordClient {
        &self.client
    }

    /// Reads one record; `None` if it does not exist.
    pub async fn get<T: Spec>(&self, namespace: &str, name: &str) -> Result<Option<Stored<T>>, E> {
        match self.client.get(T::KIND, namespace, name).await {
            Ok(Some(resource)) => Ok(Some(decode(&resource)?)),
            Ok(None) => Ok(None),
            Err(failure) => Err(RecordError::from(failure).into()),
        }
    }

    /// Creates a record, on `lease` (0 for none); `Exists` when the name is taken.
    pub async fn create<T: Spec>(
        &self,
        namespace: &str,
        name: &str,
        value: &T,
        lease: i64,
    ) -> Result<Stored<T>, WriteError<E>> {
        self.client
            .create(to_resource(namespace, name, value, lease))
            .await
            .map(|stored| Stored::of(&stored, value.clone()))
            .map_err(failed_as)
    }

    /// Replaces a record if it is still at `expected_revision`, on `lease` (0 for none).
    pub async fn update<T: Spec>(
        &self,
        namespace: &str,
        name: &str,
        value: &T,
        lease: i64,
        expected_revision: i64,
    ) -> Result<Stored<T>, WriteError<E>> {
        self.client
            .update(
                to_resource(namespace, name, value, lease),
                expected_revision,
            )
            .await
            .map(|stored| Stored::of(&stored, value.clone()))
            .map_err(failed_as)
    }

    /// Writes `value` whatever is stored, on `lease` (0 for none): creates the record, or
    /// replaces the one stored (compare-and-swap on the revision just read) once
    /// `may_replace` accepts what it holds (`None`: unreadable as `T`). Reads and writes
    /// again while other writers race it, a few times, then fails saying to retry.
    pub async fn put<T: Spec>(
        &self,
        namespace: &str,
        name: &str,
        value: &T,
        lease: i64,
        may_replace: impl Fn(Option<&T>) -> Result<(), E>,
    ) -> Result<Stored<T>, E> {
        let what = format!("{} {namespace}/{name}", T::KIND);
        let resource = to_resource(namespace, name, value, lease);
        for _ in 0..PUT_ATTEMPTS {
            let current = self
                .client
                .get(T::KIND, namespace, name)
                .await
                .map_err(RecordError::from)?;
            let written = match current {
                None => self.client.create(resource.clone()).await,
                Some(current) => {
                    let held = decode::<T>(&current).ok().map(|stored| stored.value);
                    may_replace(held.as_ref())?;
                    self.client.update(resource.clone(), current.revision).await
                }
            };
            match written {
                Ok(stored) => return Ok(Stored::of(&stored, value.clone())),
                Err(WriteError::Exists | WriteError::Conflict | WriteError::NotFound) => {}
                Err(e) => return Err(failed_as(e).into_error(&what)),
            }
        }
        Err(RecordError::Raced(format!("{what} kept changing while it was written; retry")).into())
    }

    /// Deletes a record (only at `expected_revision` when > 0); returns it as it was and
    /// the revision of the deletion.
    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        expected_revision: i64,
    ) -> Result<(Resource, i64), WriteError<E>> {
        self.client
            .delete(kind, namespace, name, expected_revision)
            .await
            .map_err(failed_as)
    }

    /// Every resource of `kind` in `namespace` ("" = every namespace), and the revision the
    /// first page was read at.
    pub async fn list_all(&self, kind: &str, namespace: &str) -> Result<(Vec<Resource>, i64), E> {
        self.scan(kind, namespace, "", |_| false).await
    }

    /// The resources of `kind` in `namespace` whose names start with `prefix`, in name order
    /// until `stop` says a name ends the scan; and the revision the first page was read at.
    pub async fn scan(
        &self,
        kind: &str,
        namespace: &str,
        prefix: &str,
        stop: impl Fn(&str) -> bool,
    ) -> Result<(Vec<Resource>, i64), E> {
        Ok(self
            .client
            .list_all(kind, namespace, prefix, stop)
            .await
            .map_err(RecordError::from)?)
    }

    /// One page of the resources of `kind` in `namespace` whose names start with `prefix`.
    pub async fn list_page(
        &self,
        kind: &str,
        namespace: &str,
        prefix: &str,
        limit: i32,
        page_token: &str,
    ) -> Result<Page, E> {
        Ok(self
            .client
            .list_page(kind, namespace, prefix, limit, page_token)
            .await
            .map_err(RecordError::from)?)
    }

    /// Streams changes of `kind` from `start_revision` (0 = from now).
    pub async fn watch(
        &self,
        kind: &str,
        start_revision: i64,
    ) -> Result<tonic::Streaming<WatchResponse>, Status> {
        self.client.watch(kind, start_revision).await
    }

    /// The largest encoded record the gateway stores.
    pub async fn max_value_bytes(&self) -> Result<usize, E> {
        Ok(self
            .client
            .max_value_bytes()
            .await
            .map_err(RecordError::from)?)
    }
}

/// A write's outcome with the gateway's failure as the service's error.
fn failed_as<E: From<RecordError>>(outcome: WriteError) -> WriteError<E> {
    outcome.map_failed(|failure| RecordError::from(failure).into())
}
