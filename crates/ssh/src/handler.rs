//! The russh `Handler` of one user connection. Each method only hands
//! over to a stage: authentication ([`crate::auth`]) and channels
//! ([`crate::channel`]).

use std::sync::Arc;

use russh::server::{self, Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure};

use crate::auth::Authenticator;
use crate::channel;
use crate::session::{ChannelCtx, ConnState, Shared};

/// Boxes a handler body: russh keeps every handler future inside each
/// connection's own state machine, so inline bodies (with their store
/// writes) would make every connection as large as the largest of them.
fn boxed<'a, T>(
    f: impl std::future::Future<Output = Result<T, russh::Error>> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, russh::Error>> + Send + 'a>> {
    Box::pin(f)
}

/// The russh handler of one user connection.
pub(crate) struct Conn {
    auth: Authenticator,
}

impl Conn {
    pub fn new(auth: Authenticator) -> Conn {
        Conn { auth }
    }
    fn shared(&self) -> &Arc<Shared> {
        &self.auth.shared
    }
    fn state(&self) -> &Arc<ConnState> {
        &self.auth.state
    }
    /// The context of this connection's channels, once authenticated.
    fn channel_ctx(&self) -> Option<ChannelCtx> {
        ChannelCtx::of(self.shared(), self.state())
    }
}

impl server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.auth.none(user))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.auth.key_offered(user, offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        raw_user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        boxed(self.auth.publickey(raw_user, key.public_key)).await
    }

    async fn auth_openssh_certificate(
        &mut self,
        raw_user: &str,
        cert: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        boxed(self.auth.certificate(raw_user, cert)).await
    }

    async fn auth_password(&mut self, raw_user: &str, password: &str) -> Result<Auth, Self::Error> {
        boxed(self.auth.password(raw_user, password)).await
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        raw_user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        boxed(self.auth.keyboard_interactive(raw_user, response)).await
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.auth.succeeded(session.handle());
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(ctx) = self.channel_ctx() else {
            return prohibited(reply).await;
        };
        boxed(async move {
            channel::open_session(ctx, channel, reply).await;
            Ok(())
        })
        .await
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        orig_addr: &str,
        orig_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(ctx) = self.channel_ctx() else {
            return prohibited(reply).await;
        };
        let jumped = self.auth.jump.is_some();
        boxed(async move {
            let (to, from) = ((host, port), (orig_addr, orig_port));
            channel::open_direct_tcpip(ctx, channel, to, from, jumped, reply).await;
            Ok(())
        })
        .await
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col: u32,
        _row: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // A certificate without permit-pty gets none (as sshd does).
        let admitted = self.state().admitted();
        if admitted.is_some_and(|a| !a.who.permit_pty()) {
            return session.channel_failure(channel);
        }
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if channel::env_allowed(&self.shared().config().server.accept_env, name) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let admitted = self.state().admitted();
        Ok(admitted.is_some_and(|a| a.dest.agent_forwarding() && a.who.permit_agent_forwarding()))
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    /// `ssh -R`: the target listens on the user's behalf.
    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(ctx) = self.channel_ctx() else {
            return Ok(false);
        };
        let asked = *port;
        let bound =
            boxed(async move { Ok(channel::tcpip_forward(ctx, address, asked).await) }).await?;
        if let Some(p) = bound {
            *port = p;
        }
        Ok(bound.is_some())
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let state = self.state().clone();
        boxed(async move { Ok(channel::cancel_tcpip_forward(&state, address, port).await) }).await
    }
}

/// Refuses a channel of a connection that is not authenticated.
async fn prohibited(reply: server::ChannelOpenHandle) -> Result<(), russh::Error> {
    reply
        .reject(ChannelOpenFailure::AdministrativelyProhibited)
        .await;
    Ok(())
}
