-- Timesketch's tables that hold import status, as the app creates them on PostgreSQL
-- (SQLAlchemy models in timesketch/models/: BaseModel, StatusMixin, Sketch, SearchIndex,
-- Timeline, DataSource, User; created by metadata.create_all, altered by its migrations).
-- Status lives in <parent>_status tables: set_status deletes the old row and inserts a new
-- one, so the current status is the row with the highest id per parent_id. No server-side
-- defaults: the app supplies created_at/updated_at itself.

CREATE TABLE "user" (
	id SERIAL NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE,
	updated_at TIMESTAMP WITHOUT TIME ZONE,
	username VARCHAR(255),
	password VARCHAR(128),
	name VARCHAR(255),
	email VARCHAR(255),
	active BOOLEAN,
	admin BOOLEAN,
	PRIMARY KEY (id),
	UNIQUE (username)
);

CREATE TABLE searchindex (
	id SERIAL NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE,
	updated_at TIMESTAMP WITHOUT TIME ZONE,
	name VARCHAR(255),
	description TEXT,
	index_name VARCHAR(255),
	user_id INTEGER,
	PRIMARY KEY (id),
	FOREIGN KEY(user_id) REFERENCES "user" (id)
);

CREATE TABLE sketch (
	id SERIAL NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE,
	updated_at TIMESTAMP WITHOUT TIME ZONE,
	name VARCHAR(255),
	description TEXT,
	user_id INTEGER,
	PRIMARY KEY (id),
	FOREIGN KEY(user_id) REFERENCES "user" (id)
);

CREATE TABLE searchindex_status (
	id SERIAL NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE,
	updated_at TIMESTAMP WITHOUT TIME ZONE,
	status VARCHAR(255),
	parent_id INTEGER,
	user_id INTEGER,
	PRIMARY KEY (id),
	FOREIGN KEY(parent_id) REFERENCES searchindex (id),
	FOREIGN KEY(user_id) REFERENCES "user" (id)
);

CREATE TABLE sketch_status (
	id SERIAL NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE,
	updated_at TIMESTAMP WITHOUT TIME ZONE,
	status VARCHAR(255),
	parent_id INTEGER,
	user_id INTEGER,
	PRIMARY KEY (id),
	FOREIGN KEY(parent_id) REFERENCES sketch (id),
	FOREIGN KEY(user_id) REFERENCES "user" (id)
);

CREATE TABLE timeline (
	id SERIAL NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE,
	updated_at TIMESTAMP WITHOUT TIME ZONE,
	name VARCHAR(255),
	description TEXT,
	color VARCHAR(6),
	user_id INTEGER,
	searchindex_id INTEGER,
	sketch_id INTEGER,
	PRIMARY KEY (id),
	FOREIGN KEY(user_id) REFERENCES "user" (id),
	FOREIGN KEY(searchindex_id) REFERENCES searchindex (id),
	FOREIGN KEY(sketch_id) REFERENCES sketch (id)
);

CREATE TABLE datasource (
	id SERIAL NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE,
	updated_at TIMESTAMP WITHOUT TIME ZONE,
	timeline_id INTEGER,
	user_id INTEGER,
	provider TEXT,
	context TEXT,
	file_on_disk TEXT,
	file_size BIGINT,
	original_filename TEXT,
	data_label TEXT,
	error_message TEXT,
	total_file_events BIGINT,
	PRIMARY KEY (id),
	FOREIGN KEY(timeline_id) REFERENCES timeline (id),
	FOREIGN KEY(user_id) REFERENCES "user" (id)
);

CREATE TABLE timeline_status (
	id SERIAL NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE,
	updated_at TIMESTAMP WITHOUT TIME ZONE,
	status VARCHAR(255),
	parent_id INTEGER,
	user_id INTEGER,
	PRIMARY KEY (id),
	FOREIGN KEY(parent_id) REFERENCES timeline (id),
	FOREIGN KEY(user_id) REFERENCES "user" (id)
);

CREATE TABLE datasource_status (
	id SERIAL NOT NULL,
	created_at TIMESTAMP WITHOUT TIME ZONE,
	updated_at TIMESTAMP WITHOUT TIME ZONE,
	status VARCHAR(255),
	parent_id INTEGER,
	user_id INTEGER,
	PRIMARY KEY (id),
	FOREIGN KEY(parent_id) REFERENCES datasource (id),
	FOREIGN KEY(user_id) REFERENCES "user" (id)
);

