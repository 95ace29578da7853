//! Sans-IO MQTT 3.1.1 and 5 codec: decodes the packets a client sends, encodes the packets a
//! server sends. Validates what both specifications require (fixed-header flags, lengths,
//! UTF-8, packet ids, v5 property rules); `session` builds on it.
