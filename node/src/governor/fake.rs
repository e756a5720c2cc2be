//! Injectable fake sources for tests: each is a shared cell that a test
//! sets while a real governor thread reads it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::sources::{
    Clock, CpuLoadSource, IdleSource, ManualPause, ManualPauseSource, PowerSource, PowerState,
    UserIdle,
};

/// A value shared between a test and the governor. Implements the source
/// trait matching its type: `Fake<UserIdle>` is an [`IdleSource`],
/// `Fake<Option<f32>>` a [`CpuLoadSource`], `Fake<PowerState>` a
/// [`PowerSource`], `Fake<ManualPause>` a [`ManualPauseSource`].
#[derive(Debug, Clone)]
pub struct Fake<T> {
    cell: Arc<Mutex<T>>,
}

impl<T: Clone> Fake<T> {
    pub fn new(value: T) -> Self {
        Fake {
            cell: Arc::new(Mutex::new(value)),
        }
    }

    pub fn set(&self, value: T) {
        *self.cell.lock().unwrap_or_else(PoisonError::into_inner) = value;
    }

    pub fn get(&self) -> T {
        self.cell
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl IdleSource for Fake<UserIdle> {
    fn user_idle(&mut self) -> UserIdle {
        self.get()
    }
}

impl CpuLoadSource for Fake<Option<f32>> {
    fn other_cpu_percent(&mut self) -> Option<f32> {
        self.get()
    }
}

impl PowerSource for Fake<PowerState> {
    fn power_state(&mut self) -> PowerState {
        self.get()
    }
}

impl ManualPauseSource for Fake<ManualPause> {
    fn manual_pause(&mut self) -> ManualPause {
        self.get()
    }
}

/// A clock set by the test: wall time and local minute of day.
#[derive(Debug, Clone)]
pub struct FakeClock {
    cell: Arc<Mutex<(SystemTime, u16)>>,
}

impl FakeClock {
    pub fn new(now: SystemTime, local_minute_of_day: u16) -> Self {
        FakeClock {
            cell: Arc::new(Mutex::new((now, local_minute_of_day))),
        }
    }

    pub fn set(&self, now: SystemTime, local_minute_of_day: u16) {
        *self.cell.lock().unwrap_or_else(PoisonError::into_inner) = (now, local_minute_of_day);
    }
}

impl Clock for FakeClock {
    fn now(&mut self) -> SystemTime {
        self.cell.lock().unwrap_or_else(PoisonError::into_inner).0
    }

    fn local_minute_of_day(&mut self, _now: SystemTime) -> u16 {
        self.cell.lock().unwrap_or_else(PoisonError::into_inner).1
    }
}

/// A full set of fake sources, all clear (idle user, no load, on AC, not
/// paused, noon), plus the handles to change them.
#[derive(Debug, Clone)]
pub struct FakeSources {
    pub idle: Fake<UserIdle>,
    pub cpu: Fake<Option<f32>>,
    pub power: Fake<PowerState>,
    pub clock: FakeClock,
    pub pause: Fake<ManualPause>,
}

impl Default for FakeSources {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeSources {
    pub fn new() -> Self {
        FakeSources {
            idle: Fake::new(UserIdle::NoSession),
            cpu: Fake::new(Some(0.0)),
            power: Fake::new(PowerState::Ac),
            clock: FakeClock::new(SystemTime::now(), 12 * 60),
            pause: Fake::new(ManualPause::NotPaused),
        }
    }

    /// Boxed clones for [`super::spawn`]; the handles stay with the test.
    pub fn sources(&self) -> super::Sources {
        super::Sources {
            idle: Box::new(self.idle.clone()),
            cpu: Box::new(self.cpu.clone()),
            power: Box::new(self.power.clone()),
            clock: Box::new(self.clock.clone()),
            pause: Box::new(self.pause.clone()),
        }
    }
}
