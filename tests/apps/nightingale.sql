-- Nightingale's job tables on MySQL/MariaDB: its own task_record (create_at in Unix seconds)
-- and the embedded ibex executor's task_meta (created TIMESTAMP), task_action (clock in Unix
-- seconds), task_scheduler, task_scheduler_health, task_host_doing and the 100 host shards
-- task_host_0..99 (task id % 100), as Nightingale's docker/initsql/a-n9e.sql creates them,
-- plus the two task_record columns its startup migration adds.
-- ibex writes task_meta, task_scheduler, task_action and the task_host_N rows in one
-- transaction; Nightingale inserts task_record afterwards, separately. A finished task has
-- no task_action (the scheduler deletes it), so "no task_action" alone means "done".

CREATE TABLE `task_record`
(
    `id` bigint unsigned not null comment 'ibex task id',
    `event_id` bigint not null comment 'event id' default 0,
    `group_id` bigint not null comment 'busi group id',
    `ibex_address`   varchar(128) not null,
    `ibex_auth_user` varchar(128) not null default '',
    `ibex_auth_pass` varchar(128) not null default '',
    `title`     varchar(255)    not null default '',
    `account`   varchar(64)     not null,
    `batch`     int unsigned    not null default 0,
    `tolerance` int unsigned    not null default 0,
    `timeout`   int unsigned    not null default 0,
    `pause`     varchar(255)    not null default '',
    `script`    text            not null,
    `args`      varchar(512)    not null default '',
    `create_at` bigint not null default 0,
    `create_by` varchar(64) not null default '',
    PRIMARY KEY (`id`),
    KEY (`create_at`, `group_id`),
    KEY (`create_by`),
    INDEX `idx_event_id` (`event_id`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
ALTER TABLE task_record ADD COLUMN auth_level int NOT NULL DEFAULT 0 COMMENT 'ai task auth level, 0=off 1/2/3=level', ADD COLUMN system_caller varchar(64) NOT NULL DEFAULT '' COMMENT 'caller system, e.g. ai-agent';

CREATE TABLE `task_meta`
(
    `id`          bigint unsigned NOT NULL AUTO_INCREMENT,
    `title`       varchar(255)    not null default '',
    `account`     varchar(64)     not null,
    `batch`       bigint          not null default 0,
    `tolerance`   bigint          not null default 0,
    `timeout`     bigint    not null default 0,
    `pause`       varchar(255)    not null default '',
    `script`      text            not null,
    `args`        varchar(512)    not null default '',
    `stdin`       varchar(1024)   not null default '',
    `creator`     varchar(64)     not null default '',
    `created`     timestamp       not null default CURRENT_TIMESTAMP,
    PRIMARY KEY (`id`),
    KEY `idx_task_meta_creator` (`creator`),
    KEY `idx_task_meta_created` (`created`)
) ENGINE = InnoDB
  DEFAULT CHARSET = utf8mb4;

/* start|cancel|kill|pause */
CREATE TABLE `task_action`
(
    `id`     bigint unsigned not null,
    `action` varchar(32)     not null,
    `clock`  bigint          not null default 0,
    PRIMARY KEY (`id`)
) ENGINE = InnoDB
  DEFAULT CHARSET = utf8mb4;

CREATE TABLE `task_scheduler`
(
    `id`        bigint unsigned not null,
    `scheduler` varchar(128)    not null default '',
    KEY (`id`, `scheduler`)
) ENGINE = InnoDB
  DEFAULT CHARSET = utf8mb4;

CREATE TABLE `task_scheduler_health`
(
    `scheduler` varchar(128) NOT NULL,
    `clock`     bigint not null,
    UNIQUE KEY `idx_task_scheduler_health_scheduler` (`scheduler`),
    KEY (`clock`)
) ENGINE = InnoDB
  DEFAULT CHARSET = utf8mb4;

CREATE TABLE `task_host_doing`
(
    `id`     bigint unsigned not null,
    `host`   varchar(128)    not null,
    `clock`  bigint          not null default 0,
    `action` varchar(16)     not null,
    KEY `idx_task_host_doing_id` (`id`),
   KEY `idx_task_host_doing_host` (`host`)
) ENGINE = InnoDB
  DEFAULT CHARSET = utf8mb4;

CREATE TABLE task_host_0
(
    `ii`     bigint unsigned NOT NULL AUTO_INCREMENT,
    `id`     bigint unsigned not null,
    `host`   varchar(128)    not null,
    `status` varchar(32)     not null,
    `stdout` text,
    `stderr` text,
    UNIQUE KEY `idx_id_host` (`id`, `host`),
    PRIMARY KEY (`ii`)
) ENGINE = InnoDB
  DEFAULT CHARSET = utf8mb4;

-- task_host_1 .. task_host_99: identical to task_host_0
CREATE TABLE task_host_1 LIKE task_host_0;
CREATE TABLE task_host_2 LIKE task_host_0;
CREATE TABLE task_host_3 LIKE task_host_0;
CREATE TABLE task_host_4 LIKE task_host_0;
CREATE TABLE task_host_5 LIKE task_host_0;
CREATE TABLE task_host_6 LIKE task_host_0;
CREATE TABLE task_host_7 LIKE task_host_0;
CREATE TABLE task_host_8 LIKE task_host_0;
CREATE TABLE task_host_9 LIKE task_host_0;
CREATE TABLE task_host_10 LIKE task_host_0;
CREATE TABLE task_host_11 LIKE task_host_0;
CREATE TABLE task_host_12 LIKE task_host_0;
CREATE TABLE task_host_13 LIKE task_host_0;
CREATE TABLE task_host_14 LIKE task_host_0;
CREATE TABLE task_host_15 LIKE task_host_0;
CREATE TABLE task_host_16 LIKE task_host_0;
CREATE TABLE task_host_17 LIKE task_host_0;
CREATE TABLE task_host_18 LIKE task_host_0;
CREATE TABLE task_host_19 LIKE task_host_0;
CREATE TABLE task_host_20 LIKE task_host_0;
CREATE TABLE task_host_21 LIKE task_host_0;
CREATE TABLE task_host_22 LIKE task_host_0;
CREATE TABLE task_host_23 LIKE task_host_0;
CREATE TABLE task_host_24 LIKE task_host_0;
CREATE TABLE task_host_25 LIKE task_host_0;
CREATE TABLE task_host_26 LIKE task_host_0;
CREATE TABLE task_host_27 LIKE task_host_0;
CREATE TABLE task_host_28 LIKE task_host_0;
CREATE TABLE task_host_29 LIKE task_host_0;
CREATE TABLE task_host_30 LIKE task_host_0;
CREATE TABLE task_host_31 LIKE task_host_0;
CREATE TABLE task_host_32 LIKE task_host_0;
CREATE TABLE task_host_33 LIKE task_host_0;
CREATE TABLE task_host_34 LIKE task_host_0;
CREATE TABLE task_host_35 LIKE task_host_0;
CREATE TABLE task_host_36 LIKE task_host_0;
CREATE TABLE task_host_37 LIKE task_host_0;
CREATE TABLE task_host_38 LIKE task_host_0;
CREATE TABLE task_host_39 LIKE task_host_0;
CREATE TABLE task_host_40 LIKE task_host_0;
CREATE TABLE task_host_41 LIKE task_host_0;
CREATE TABLE task_host_42 LIKE task_host_0;
CREATE TABLE task_host_43 LIKE task_host_0;
CREATE TABLE task_host_44 LIKE task_host_0;
CREATE TABLE task_host_45 LIKE task_host_0;
CREATE TABLE task_host_46 LIKE task_host_0;
CREATE TABLE task_host_47 LIKE task_host_0;
CREATE TABLE task_host_48 LIKE task_host_0;
CREATE TABLE task_host_49 LIKE task_host_0;
CREATE TABLE task_host_50 LIKE task_host_0;
CREATE TABLE task_host_51 LIKE task_host_0;
CREATE TABLE task_host_52 LIKE task_host_0;
CREATE TABLE task_host_53 LIKE task_host_0;
CREATE TABLE task_host_54 LIKE task_host_0;
CREATE TABLE task_host_55 LIKE task_host_0;
CREATE TABLE task_host_56 LIKE task_host_0;
CREATE TABLE task_host_57 LIKE task_host_0;
CREATE TABLE task_host_58 LIKE task_host_0;
CREATE TABLE task_host_59 LIKE task_host_0;
CREATE TABLE task_host_60 LIKE task_host_0;
CREATE TABLE task_host_61 LIKE task_host_0;
CREATE TABLE task_host_62 LIKE task_host_0;
CREATE TABLE task_host_63 LIKE task_host_0;
CREATE TABLE task_host_64 LIKE task_host_0;
CREATE TABLE task_host_65 LIKE task_host_0;
CREATE TABLE task_host_66 LIKE task_host_0;
CREATE TABLE task_host_67 LIKE task_host_0;
CREATE TABLE task_host_68 LIKE task_host_0;
CREATE TABLE task_host_69 LIKE task_host_0;
CREATE TABLE task_host_70 LIKE task_host_0;
CREATE TABLE task_host_71 LIKE task_host_0;
CREATE TABLE task_host_72 LIKE task_host_0;
CREATE TABLE task_host_73 LIKE task_host_0;
CREATE TABLE task_host_74 LIKE task_host_0;
CREATE TABLE task_host_75 LIKE task_host_0;
CREATE TABLE task_host_76 LIKE task_host_0;
CREATE TABLE task_host_77 LIKE task_host_0;
CREATE TABLE task_host_78 LIKE task_host_0;
CREATE TABLE task_host_79 LIKE task_host_0;
CREATE TABLE task_host_80 LIKE task_host_0;
CREATE TABLE task_host_81 LIKE task_host_0;
CREATE TABLE task_host_82 LIKE task_host_0;
CREATE TABLE task_host_83 LIKE task_host_0;
CREATE TABLE task_host_84 LIKE task_host_0;
CREATE TABLE task_host_85 LIKE task_host_0;
CREATE TABLE task_host_86 LIKE task_host_0;
CREATE TABLE task_host_87 LIKE task_host_0;
CREATE TABLE task_host_88 LIKE task_host_0;
CREATE TABLE task_host_89 LIKE task_host_0;
CREATE TABLE task_host_90 LIKE task_host_0;
CREATE TABLE task_host_91 LIKE task_host_0;
CREATE TABLE task_host_92 LIKE task_host_0;
CREATE TABLE task_host_93 LIKE task_host_0;
CREATE TABLE task_host_94 LIKE task_host_0;
CREATE TABLE task_host_95 LIKE task_host_0;
CREATE TABLE task_host_96 LIKE task_host_0;
CREATE TABLE task_host_97 LIKE task_host_0;
CREATE TABLE task_host_98 LIKE task_host_0;
CREATE TABLE task_host_99 LIKE task_host_0;
