//! What the instance knows of its dependencies, for `/readyz`.

use std::sync::atomic::{AtomicU8, Ordering};

use serde::Serialize;

/// The state of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dependency {
    Up,
    Degraded,
    Down,
}

impl Dependency {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Dependency::Up,
            1 => Dependency::Degraded,
            _ => Dependency::Down,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Dependency::Up => 0,
            Dependency::Degraded => 1,
            Dependency::Down => 2,
        }
    }
}

/// Updated by the components that talk to each dependency.
#[derive(Debug)]
pub struct Health {
    database: AtomicU8,
    bus: AtomicU8,
    read_model: AtomicU8,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            database: AtomicU8::new(Dependency::Up.as_u8()),
            bus: AtomicU8::new(Dependency::Up.as_u8()),
            // Down until the read model is loaded.
            read_model: AtomicU8::new(Dependency::Down.as_u8()),
        }
    }
}

impl Health {
    pub fn database(&self) -> Dependency {
        Dependency::from_u8(self.database.load(Ordering::Relaxed))
    }

    pub fn bus(&self) -> Dependency {
        Dependency::from_u8(self.bus.load(Ordering::Relaxed))
    }

    pub fn read_model(&self) -> Dependency {
        Dependency::from_u8(self.read_model.load(Ordering::Relaxed))
    }

    pub fn set_database(&self, state: Dependency) {
        self.database.store(state.as_u8(), Ordering::Relaxed);
    }

    pub fn set_bus(&self, state: Dependency) {
        self.bus.store(state.as_u8(), Ordering::Relaxed);
    }

    pub fn set_read_model(&self, state: Dependency) {
        self.read_model.store(state.as_u8(), Ordering::Relaxed);
    }
}
