//! The usual stage of an end-to-end test: one shop "acme" with an open
//! register, one carrier "docomo" whose relay is the terminal simulator,
//! and the simulator's handsets, each with its policy and wallet top-up.

use std::time::Duration;

use syncpay::register::VirtualRegister;
use syncpay::terminal_sim::{CarrierSim, Policy};

use super::backends::BackendFactory;
use super::TestServer;

/// How long the stage waits for the relay to connect.
const CONNECT_WAIT: Duration = Duration::from_secs(15);

pub struct World {
    pub t: TestServer,
    pub shop_token: String,
    pub carrier_token: String,
    pub sim: CarrierSim,
    pub register: VirtualRegister,
}

/// A server on `backend` with the stage above; `handsets` are
/// `(number, policy, wallet top-up in JPY)`, a top-up of 0 is none. The
/// register is labelled "till 1"; the relay is connected on return.
pub async fn world(backend: &'static BackendFactory, handsets: &[(&str, Policy, u64)]) -> World {
    let t = TestServer::start_on(backend).await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    let sim = CarrierSim::start(t.channel().await, &carrier_token).expect("sim");
    for (number, policy, top_up) in handsets {
        sim.add_handset(number, *policy).await.expect("handset");
        if *top_up > 0 {
            t.top_up(number, *top_up, "JPY").await;
        }
    }
    sim.wait_connected(CONNECT_WAIT).await.expect("relay connected");
    let register = VirtualRegister::open(t.channel().await, &shop_token, "till 1").await.expect("register");
    World { t, shop_token, carrier_token, sim, register }
}
