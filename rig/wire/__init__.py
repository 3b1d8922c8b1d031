"""What travels on Kafka: typed records, the Avro/JSON codec, intake of raw messages, the topics."""
