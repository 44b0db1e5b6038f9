//! SpeechSense emulator (work in progress).
