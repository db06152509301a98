//! The routes each function serves, declared beside its handlers and read by everything that
//! maps requests to functions: the function's own router, `template.yaml` and `cargo lambda
//! watch`'s router (both checked against these by a test), so that none of them can drift.

use axum::handler::Handler;
use axum::routing::{MethodFilter, MethodRouter};

/// An HTTP method a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

/// One method on one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
}

impl Route {
    #[must_use]
    pub const fn get(path: &'static str) -> Self {
        Self { method: Method::Get, path }
    }

    #[must_use]
    pub const fn post(path: &'static str) -> Self {
        Self { method: Method::Post, path }
    }

    #[must_use]
    pub const fn patch(path: &'static str) -> Self {
        Self { method: Method::Patch, path }
    }

    #[must_use]
    pub const fn delete(path: &'static str) -> Self {
        Self { method: Method::Delete, path }
    }

    /// The method as HTTP writes it.
    #[must_use]
    pub const fn method_name(&self) -> &'static str {
        match self.method {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    /// `handler` on this route's method, for `Router::route(route.path, route.to(handler))`.
    pub fn to<H, T, S>(&self, handler: H) -> MethodRouter<S>
    where
        H: Handler<T, S>,
        T: 'static,
        S: Clone + Send + Sync + 'static,
    {
        let filter = match self.method {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Patch => MethodFilter::PATCH,
            Method::Delete => MethodFilter::DELETE,
        };
        axum::routing::on(filter, handler)
    }
}
