//! Bitrix24 portal emulator (work in progress).
