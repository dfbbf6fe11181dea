-- A SQLite database made by schema version 1 (the first release), with a few rows of
-- every kind, dumped with sqlite3's iterdump. tests/test_store.py loads it and checks that
-- the current code opens it, upgrades it in place and keeps every row. Never edit it.
BEGIN TRANSACTION;
CREATE TABLE lists (
	id INTEGER NOT NULL, 
	name VARCHAR(63) NOT NULL, 
	title VARCHAR(200) DEFAULT '' NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_lists PRIMARY KEY (id), 
	CONSTRAINT uq_lists_name UNIQUE (name)
);
INSERT INTO "lists" VALUES(1,'weekly','The weekly letter','2026-11-29 22:58:51.533508');
INSERT INTO "lists" VALUES(2,'main','','2026-11-29 22:58:51.559321');
CREATE TABLE memberships (
	list_id INTEGER NOT NULL, 
	subscriber_id INTEGER NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	source VARCHAR(200) DEFAULT '' NOT NULL, 
	created_at DATETIME NOT NULL, 
	confirmed_at DATETIME, 
	unsubscribed_at DATETIME, 
	CONSTRAINT pk_memberships PRIMARY KEY (list_id, subscriber_id), 
	CONSTRAINT ck_memberships_status CHECK (status IN ('pending', 'active', 'unsubscribed')), 
	CONSTRAINT fk_memberships_list_id_lists FOREIGN KEY(list_id) REFERENCES lists (id) ON DELETE CASCADE, 
	CONSTRAINT fk_memberships_subscriber_id_subscribers FOREIGN KEY(subscriber_id) REFERENCES subscribers (id) ON DELETE CASCADE
);
INSERT INTO "memberships" VALUES(2,1,'active','manual','2026-11-29 22:58:51.558447','2026-11-29 22:58:51.558447',NULL);
INSERT INTO "memberships" VALUES(1,1,'unsubscribed','manual','2026-11-29 22:58:51.564068','2026-11-29 22:58:51.564068','2026-11-29 22:58:51.565398');
INSERT INTO "memberships" VALUES(2,2,'pending','manual','2026-11-29 22:58:51.569163',NULL,NULL);
INSERT INTO "memberships" VALUES(2,3,'active','manual','2026-11-29 22:58:51.570629','2026-11-29 22:58:51.570629',NULL);
INSERT INTO "memberships" VALUES(2,4,'active','manual','2026-11-29 22:58:51.572012','2026-11-29 22:58:51.572012',NULL);
CREATE TABLE schema_migrations (
	version INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	applied_at DATETIME NOT NULL, 
	CONSTRAINT pk_schema_migrations PRIMARY KEY (version)
);
INSERT INTO "schema_migrations" VALUES(1,'lists, subscribers, memberships, suppressions','2026-11-29 22:58:51.530632');
CREATE TABLE subscribers (
	id INTEGER NOT NULL, 
	email VARCHAR(320) NOT NULL, 
	email_key VARCHAR(320) NOT NULL, 
	email_hash VARCHAR(64) NOT NULL, 
	name VARCHAR(200) DEFAULT '' NOT NULL, 
	attributes JSON NOT NULL, 
	source VARCHAR(200) DEFAULT '' NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	CONSTRAINT pk_subscribers PRIMARY KEY (id), 
	CONSTRAINT uq_subscribers_email_key UNIQUE (email_key), 
	CONSTRAINT uq_subscribers_email_hash UNIQUE (email_hash)
);
INSERT INTO "subscribers" VALUES(1,'ann@example.com','ann@example.com','71d4f55f72fa128dfb468a1a3901507c804b74316488744d769d7f4b16696476','Ann Berg','{}','manual','2026-11-29 22:58:51.558447','2026-11-29 22:58:51.558447');
INSERT INTO "subscribers" VALUES(2,'bob@example.org','bob@example.org','686b5e4cf4f963adf8f51468a48028ef8d15bd02fa335f821279a3d1678c9615','Bob Stone','{}','manual','2026-11-29 22:58:51.569163','2026-11-29 22:58:51.569163');
INSERT INTO "subscribers" VALUES(3,'Cara@Example.net','cara@example.net','45e45d61ac771b39e026340165ff20092a868c3dd6ea06e60c70d5dda0b07dc9','Cåra Ødegård','{"company": "Nordlys AS", "plan": "free"}','manual','2026-11-29 22:58:51.570629','2026-11-29 22:58:51.570629');
INSERT INTO "subscribers" VALUES(4,'dan@example.com','dan@example.com','c8cf6521c193fc743c7fadcd8be04e983724764efa65b3c3913b6d22f086a11f','Dan Bounce','{}','manual','2026-11-29 22:58:51.572012','2026-11-29 22:58:51.572012');
CREATE TABLE suppressions (
	email_hash VARCHAR(64) NOT NULL, 
	reason VARCHAR(16) NOT NULL, 
	detail TEXT DEFAULT '' NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_suppressions PRIMARY KEY (email_hash), 
	CONSTRAINT ck_suppressions_reason CHECK (reason IN ('bounced', 'complained', 'manual', 'forgotten'))
);
INSERT INTO "suppressions" VALUES('c8cf6521c193fc743c7fadcd8be04e983724764efa65b3c3913b6d22f086a11f','bounced','550 5.1.1 mailbox unavailable','2026-11-29 22:58:51.573606');
INSERT INTO "suppressions" VALUES('cf5e975e71823a18970eb99d5bd4af7ff3c54ea33702d1d828bcb50619b40b70','forgotten','','2026-11-29 22:58:51.575705');
CREATE INDEX ix_memberships_list_status ON memberships (list_id, status, subscriber_id);
CREATE INDEX ix_memberships_subscriber ON memberships (subscriber_id);
COMMIT;
